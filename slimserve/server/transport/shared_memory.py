"""Triton's system shared memory: tensors passed through POSIX shared memory, not the wire.

A client creates a shared memory object (`shm_open("/key")`, a file under /dev/shm), registers
part of it under a name (SystemSharedMemoryRegister: name, key, offset, byte_size), and then
names that region, an offset into it and a byte size in an input's or a requested output's
parameters (`shared_memory_region`, `shared_memory_offset`, `shared_memory_byte_size`): the
input is read from there instead of the request's contents, and the output written there
instead of the response's (transport.codec).

Keys. A key is a POSIX shared memory name, "/" and one file name of at most MAX_KEY_CHARS
(letters, digits, `._+-`; not "." or ".."): it can only name a file directly under /dev/shm.
The file is opened without following a symbolic link, and must be a regular file at least
offset + byte_size long. It is mapped read/write (`mmap`), from the page its region starts on.

Owners. A region belongs to the caller that registered it (`auth.caller_of`: its token's
digest); another token cannot use it in a request, see it in Status, or unregister it: to
them the name is unknown, and two tokens may each register the same name. With
authentication off there is one namespace, as in Triton.

Bounds. At most MAX_REGIONS regions and MAX_MAPPED_BYTES mapped bytes per server (each region
maps its own pages, so the same key registered twice counts twice): a caller cannot make the
server map without limit. Offsets and sizes given with a tensor must lie inside the region.

Unregister while in use. Everything here runs on the event loop (the servicer's handlers and
the codec's decode and encode, which the data plane runs there), and no step holds a view of a
mapping across an `await`: an input is copied out of its region when the request is decoded,
and an output is written into its region when the response is encoded, each in one step that
Unregister (also one step on the loop) cannot interleave with. Unregister closes the mapping at
once. A request whose output region was unregistered (or replaced by a new registration under
the same name) while it ran fails INVALID_ARGUMENT naming the output; nothing touches a closed
mapping. A client that shrinks the file under a registered region would make a read past its
end raise SIGBUS; the file's size is checked before every read and write, so only a client
racing that check within microseconds could, and such a client already shares the machine.

With `--workers N` each worker process holds its own regions: a client registers and infers
over one channel (one connection reaches one worker), as tritonclient and perf_analyzer do.
Every mapping is closed at unregister and when the server stops (`close`).
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimserve.repository.format import MAX_NAME_CHARS
from slimserve.server.errors import InvalidInputError, NotFoundError, shown
from slimserve.server.transport.auth import caller_of

SHM_DIRECTORY = Path("/dev/shm")  # where Linux keeps POSIX shared memory objects
MAX_KEY_CHARS = 255  # a file name under /dev/shm: NAME_MAX, the leading "/" included
_KEY = re.compile(r"/[A-Za-z0-9._+-]{1,254}")
MAX_REGIONS = 128  # registered at once, all callers together
MAX_MAPPED_BYTES = 8 * 1024**3  # mapped at once, all regions together (address space, not memory)
_PAGE_BYTES = mmap.ALLOCATIONGRANULARITY  # a mapping starts on a multiple of this


class RegionLimitError(InvalidInputError):
    """Registering the region would pass the server's MAX_REGIONS or MAX_MAPPED_BYTES."""


@dataclass(eq=False)
class Region:
    """One registered region: `byte_size` bytes at `offset` in the object `key`, mapped."""

    name: str
    key: str
    offset: int
    byte_size: int
    _fd: int
    _map: mmap.mmap
    _start: int  # where the region starts in the mapping (the mapping starts on a page)
    closed: bool = field(default=False)

    @property
    def mapped_bytes(self) -> int:
        return len(self._map)

    def _check_file(self, what: str) -> None:
        # Reading a mapped page past the end of the file raises SIGBUS (module docstring).
        if os.fstat(self._fd).st_size < self.offset + self.byte_size:
            raise InvalidInputError(
                f"{what}: shared memory {shown(self.key)} was made shorter than region {shown(self.name)} "
                f"({self.offset + self.byte_size} bytes)"
            )

    def read(self, offset: int, size: int, what: str) -> bytes:
        """A copy of `size` bytes at `offset` in the region (checked by `SharedMemory.slot`)."""
        self._check_file(what)
        start = self._start + offset
        return self._map[start : start + size]

    def write(self, offset: int, data: bytes | memoryview, what: str) -> None:
        self._check_file(what)
        start = self._start + offset
        self._map[start : start + len(data)] = data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._map.close()
            os.close(self._fd)


@dataclass(frozen=True)
class Slot:
    """Where one tensor lies: `size` bytes at `offset` in `region`, for the tensor `what`
    names ("input 'x'"). An input's bytes are copied out (`read`) when it is decoded; an
    output's are written (`write`) when the response is encoded (module docstring)."""

    region: Region
    offset: int
    size: int
    what: str

    def read(self) -> bytes:
        self._check_registered()
        return self.region.read(self.offset, self.size, self.what)

    def write(self, data: bytes | memoryview) -> None:
        self._check_registered()
        if len(data) > self.size:
            raise InvalidInputError(
                f"{self.what}: {len(data)} bytes do not fit the {self.size} bytes of shared memory "
                f"(shared_memory_byte_size) given for it in region {shown(self.region.name)}"
            )
        self.region.write(self.offset, data, self.what)

    def _check_registered(self) -> None:
        if self.region.closed:
            raise InvalidInputError(
                f"{self.what}: shared memory region {shown(self.region.name)} was unregistered while the request ran"
            )


@dataclass(frozen=True)
class CallerRegions:
    """The regions one caller may name in its requests: its own (module docstring: Owners)."""

    memory: SharedMemory
    owner: str

    def slot(self, name: str, offset: int, size: int, what: str) -> Slot:
        return self.memory.slot(self.owner, name, offset, size, what)


class SharedMemory:
    """The registered regions of one server, by (owner, name) (module docstring). Owned by the
    event loop: every method runs there, none awaits."""

    def __init__(self, per_caller: bool, directory: Path = SHM_DIRECTORY) -> None:
        self._per_caller = per_caller  # authentication on: each token has its own namespace
        self._directory = directory
        self._regions: dict[tuple[str, str], Region] = {}

    @property
    def mapped_bytes(self) -> int:
        return sum(region.mapped_bytes for region in self._regions.values())

    def owner(self, metadata: Iterable[tuple[str, Any]] | None) -> str:
        """The namespace of the caller that sent `metadata`: '' for everyone with auth off."""
        return caller_of(metadata) if self._per_caller else ""

    def of(self, metadata: Iterable[tuple[str, Any]] | None) -> CallerRegions:
        """The regions the caller that sent `metadata` may use."""
        return CallerRegions(self, self.owner(metadata))

    def register(self, owner: str, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map `byte_size` bytes at `offset` of the object `key` as `owner`'s region `name`."""
        if not name or len(name) > MAX_NAME_CHARS:
            raise InvalidInputError(f"shared memory region name {shown(name)}: 1 to {MAX_NAME_CHARS} characters")
        if (owner, name) in self._regions:
            raise InvalidInputError(f"shared memory region {shown(name)} is already registered; unregister it first")
        path = self._path(key)
        if byte_size <= 0:
            raise InvalidInputError(f"shared memory region {shown(name)}: byte_size must be above 0")
        if len(self._regions) >= MAX_REGIONS:
            raise RegionLimitError(
                f"{MAX_REGIONS} shared memory regions are registered, the most this server maps; unregister one first"
            )
        start = offset - offset % _PAGE_BYTES
        length = offset + byte_size - start
        if self.mapped_bytes + length > MAX_MAPPED_BYTES:
            raise RegionLimitError(
                f"shared memory region {shown(name)}: {length} more mapped bytes would pass the "
                f"{MAX_MAPPED_BYTES} bytes this server maps at most ({self.mapped_bytes} mapped now)"
            )
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidInputError(
                f"shared memory region {shown(name)}: cannot open key {shown(key)}: {exc.strerror}"
            ) from None
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise InvalidInputError(f"shared memory region {shown(name)}: key {shown(key)} is not a file")
            if status.st_size < offset + byte_size:
                raise InvalidInputError(
                    f"shared memory region {shown(name)}: offset {offset} + byte_size {byte_size} runs past "
                    f"the end of key {shown(key)} ({status.st_size} bytes)"
                )
            mapping = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        except BaseException:
            os.close(fd)
            raise
        self._regions[(owner, name)] = Region(name, key, offset, byte_size, fd, mapping, offset - start)

    def _path(self, key: str) -> Path:
        """The file of the POSIX shared memory name `key` (module docstring: Keys)."""
        name = key[1:]
        if len(key) > MAX_KEY_CHARS or not _KEY.fullmatch(key) or name in (".", ".."):
            raise InvalidInputError(
                f"shared memory key {shown(key)}: a POSIX shared memory name, '/' and a file name of "
                f"letters, digits and ._+- (at most {MAX_KEY_CHARS} characters), naming a file in {self._directory}"
            )
        return self._directory / name

    def status(self, owner: str, name: str = "") -> list[Region]:
        """`owner`'s region `name`, or all of them for ''; NotFoundError for an unknown name."""
        if not name:
            return [region for (who, _), region in self._regions.items() if who == owner]
        if (owner, name) not in self._regions:
            raise NotFoundError(f"no system shared memory region {shown(name)} is registered")
        return [self._regions[(owner, name)]]

    def unregister(self, owner: str, name: str = "") -> None:
        """Unmap `owner`'s region `name`, or all of them for ''. An unknown name is not an
        error (as in Triton: a client unregisters before registering, to start clean)."""
        names = [n for (who, n) in self._regions if who == owner] if not name else [name]
        for each in names:
            region = self._regions.pop((owner, each), None)
            if region is not None:
                region.close()

    def slot(self, owner: str, name: str, offset: int, size: int, what: str) -> Slot:
        """`size` bytes at `offset` in `owner`'s region `name`, for the tensor `what`."""
        region = self._regions.get((owner, name))
        if region is None:
            raise InvalidInputError(f"{what}: no system shared memory region {shown(name)} is registered")
        if offset > region.byte_size or size > region.byte_size - offset:
            raise InvalidInputError(
                f"{what}: shared_memory_offset {offset} + shared_memory_byte_size {size} runs past the "
                f"{region.byte_size} bytes of region {shown(name)}"
            )
        return Slot(region, offset, size, what)

    def close(self) -> None:
        """Unmap every region (the server stops)."""
        for region in self._regions.values():
            region.close()
        self._regions.clear()
