"""Live model management: load, reload and unload models while serving (Triton's model control).

A load reads the model's folder again and makes the new version beside the old one, off
the event loop (validation, profiles for this machine if missing, ONNX Runtime sessions,
warm-up). If anything fails, the load is refused with the reason and the old version keeps
serving, untouched. Otherwise, on the event loop and in one step, the model's entry in the
registry is replaced: every call that resolves the model from then on gets the new version,
while calls already admitted to the old batchers are served by them, which are then closed
(they finish their queue first) and released.

A variant whose graph (SHA-256) and the model's config are unchanged is not reloaded: its
batcher, session and statistics carry over, and the new router adopts what the old one had
learned (ModelRouter.adopt). So adding or removing one variant disturbs only that variant.
Its profile for this machine carries over too when it was measured here; one borrowed from
another thread count is borrowed again from the new files (`core.profiles`).

`store_profiles` (once a background build has finished, in the process that ran it)
measures each model of the repository that lacks a profile for this process's hardware,
writes it into the model's files, and loads the model again from them; the other workers'
pollers see the files change and do the same, without measuring.

`RepositoryPoller` does the same for a folder that changes: every `--repository-poll-s`
it compares each model folder's files (names, sizes, modification times) with what it last
loaded, and loads, reloads or unloads to match. A version that failed is not retried until
its files change again, nor is a model unloaded by a call reloaded until then; a folder must
be missing from two scans in a row before its model is unloaded (the builder swaps a folder
by two renames, with a moment between them). A load records the files it read only if they
did not change while it read them; otherwise the next scan loads again.

Thread: owned by the event loop; the blocking parts run in the default executor. One
change at a time (an asyncio lock), so a load and an unload of the same model never race.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import time
from collections.abc import Callable
from pathlib import Path

from slimserve.repository.format import (
    MODEL_FILE,
    ModelConfig,
    ModelEntry,
    RepositoryError,
    check_name,
    load_model,
    model_folders,
    restore_interrupted,
)
from slimserve.router.build import UnroutableVariantError
from slimserve.server.core.batcher import DynamicBatcher
from slimserve.server.core.profiles import Profiler
from slimserve.server.core.registry import HostedModel, HostedModelFactory, ModelRegistry
from slimserve.server.core.session import VariantSession, verified_graph
from slimserve.server.errors import InvalidInputError, ModelLoadError, NotFoundError
from slimserve.server.observe.recorder import CallRecorder

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, int, int], ...]  # (relative path, size, mtime in ns) of a model's files


def folder_signature(folder: Path) -> Signature:
    """What changes when a model folder's files do (hidden build folders excluded)."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            stat = path.stat()
            files.append((str(relative), stat.st_size, stat.st_mtime_ns))
    return tuple(files)


def _signature_or_none(folder: Path) -> Signature | None:
    """`folder_signature`, or None when the folder cannot be read now (being replaced)."""
    try:
        return folder_signature(folder)
    except OSError:
        return None


def held_signature(folder: Path) -> Signature | None:
    """The signature a model unloaded by call is held by (`ModelControl.hold_unloaded`): its
    files as they are now, None where the folder holds no model or cannot be read now."""
    return _signature_or_none(folder) if (folder / MODEL_FILE).is_file() else None


def release_freed_memory() -> None:
    """Return the C heap's free pages to the system (glibc's malloc_trim; ctypes releases
    the GIL for it): while a model is reloaded its old and new sessions coexist, and glibc
    would otherwise keep that peak. Measured (`make bench-reload`, 20 reloads and 10 variant
    swaps under load): RSS +1.4 % and +4.0 % in two runs."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class ModelControl:
    """Loads, reloads and unloads the registry's models from the repository (module docstring)."""

    def __init__(
        self,
        registry: ModelRegistry,
        factory: HostedModelFactory,
        recorder: CallRecorder,
        repository: Path,
        profiler: Profiler,
        warmup_calls: int,
        on_change: Callable[[], None],
    ) -> None:
        self._registry = registry
        self._factory = factory
        self._recorder = recorder
        self.repository = repository
        self._profiler = profiler
        self._warmup_calls = warmup_calls
        self._on_change = on_change
        self._lock = asyncio.Lock()
        self.signatures: dict[str, Signature] = {}  # of the files each model was loaded from, or unloaded by call with
        self.reasons: dict[str, str] = {}  # why the last load of a model failed (RepositoryIndex)
        for name in registry:
            with contextlib.suppress(OSError):
                self.signatures[name] = folder_signature(repository / name)

    async def load(self, name: str) -> str:
        """Load or reload `name` where the server serves it (a call's change: under --workers,
        every worker; process.peers); returns what changed."""
        return await self.load_here(name)

    async def unload(self, name: str) -> str:
        """Unload `name` where the server serves it (a call's change; process.peers)."""
        return await self.unload_here(name)

    async def load_here(self, name: str) -> str:
        """Load or reload `name` in this process; returns what changed. ModelLoadError: the old
        one still serves."""
        try:
            check_name(name, "model")
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc
        async with self._lock:
            folder = self.repository / name
            if not (folder / MODEL_FILE).is_file():
                raise NotFoundError(f"no model '{name}' in the repository {self.repository} (no {name}/{MODEL_FILE})")
            started = time.monotonic()
            old = self._registry.models.get(name)
            loop = asyncio.get_running_loop()
            signature = await loop.run_in_executor(None, _signature_or_none, folder)
            try:
                entry, sessions, kept = await loop.run_in_executor(None, self._prepare, folder, old)
            except ModelLoadError as exc:
                self.reasons[name] = str(exc)
                await self._remember_read(name, signature)  # not retried by the poller until the files change
                log.error("%s", exc)
                raise
            hosted = self._factory.build(entry, sessions, kept, old)
            for variant, batcher in hosted.batchers.items():
                if variant not in kept:
                    batcher.start()
            self._recorder.describe({name: entry})
            self._registry.put(hosted)  # the switch: every call from now on gets the new version
            await self._remember_read(name, signature)
            self.reasons.pop(name, None)
            summary = self._summary(name, old, hosted, kept, time.monotonic() - started)
            retired = [b for v, b in (old.batchers.items() if old else ()) if v not in kept]
            del old  # the batchers' list is then the last reference to the old sessions
            await self._retire(retired)
            log.info("%s", summary)
            self._changed()
            return summary

    async def unload_here(self, name: str, *, hold: bool = True) -> str:
        """Stop serving `name` in this process: new calls get NOT_FOUND, admitted ones finish,
        then it is released. With `hold` (a call's unload) the poller leaves it unloaded until
        its files change; the poller's own unload (its folder gone) does not hold."""
        async with self._lock:
            # Read before anything changes: the poller compares signatures between its scans
            # without the lock, and must never see the model gone and not yet held.
            held = await self._read_held_signature(name) if hold and name in self._registry.models else None
            hosted = self._registry.remove(name)
            if hosted is None:
                raise NotFoundError(f"model '{name}' is not loaded; loaded: {sorted(self._registry)}")
            self.signatures.pop(name, None)
            self.hold(name, held)
            variants = ", ".join(hosted.batchers)
            retired = list(hosted.batchers.values())
            del hosted
            await self._retire(retired)
            log.info("unloaded %s (%s)", name, variants)
            self._changed()
            return f"unloaded {name}"

    async def hold_unloaded(self, name: str) -> None:
        """Record `name`'s files as they are now, as if loaded from them, so that the poller
        loads the model again only once they change (a model unloaded by a call, here or on
        another worker). The folder is read in a thread, as every walk of the repository is."""
        self.hold(name, await self._read_held_signature(name))

    async def _read_held_signature(self, name: str) -> Signature | None:
        return await asyncio.get_running_loop().run_in_executor(None, held_signature, self.repository / name)

    def hold(self, name: str, signature: Signature | None) -> None:
        """Hold `name` unloaded by `signature` (`held_signature`; None: nothing to hold)."""
        if signature is not None:
            self.signatures[name] = signature

    async def _remember_read(self, name: str, before: Signature | None) -> None:
        """Record the files a load read (`before`: their signature as it began), so that the
        poller loads the model again only when they change. Files that changed while the load
        read them leave what it read unknown: then nothing is recorded and the next scan loads
        again (else a change undone later, a folder moved away and back, would look like no
        change at all)."""
        after = await asyncio.get_running_loop().run_in_executor(None, _signature_or_none, self.repository / name)
        if before is not None and before == after:
            self.signatures[name] = before
        else:
            self.signatures.pop(name, None)

    def _prepare(
        self, folder: Path, old: HostedModel | None
    ) -> tuple[ModelEntry, dict[str, VariantSession], dict[str, DynamicBatcher]]:
        """Blocking, off the loop: validate, profile if needed, open and warm up new sessions."""
        name = folder.name
        try:
            entry = load_model(folder, self.repository)
            for loaded in entry.variants.values():  # refused before any profiling; each session checks its own bytes
                verified_graph(loaded)
            self._carry_profiles(entry, old)
            self._profiler.ensure({name: entry})
            kept = self._unchanged(entry, old)
            sessions: dict[str, VariantSession] = {}
            for variant in set(entry.variants) - set(kept):
                try:
                    sessions[variant] = VariantSession(entry.config, entry.variants[variant], self._factory.threads)
                    sessions[variant].warm_up(self._warmup_calls)
                except Exception as exc:  # ONNX Runtime refusing a graph or failing to run it
                    raise ModelLoadError(
                        f"model '{name}' was not loaded: variant '{variant}': {type(exc).__name__}: {exc}"
                    ) from exc
        except (RepositoryError, UnroutableVariantError) as exc:
            raise ModelLoadError(f"model '{name}' was not loaded: {exc}") from exc
        except OSError as exc:  # a file vanishing mid-read
            raise ModelLoadError(f"model '{name}' was not loaded: {exc}") from exc
        except ModelLoadError:
            raise
        except Exception as exc:  # profiling a graph ONNX Runtime cannot run, …
            log.exception("loading %s failed", name)
            raise ModelLoadError(f"model '{name}' was not loaded: {type(exc).__name__}: {exc}") from exc
        return entry, sessions, kept

    def _carry_profiles(self, entry: ModelEntry, old: HostedModel | None) -> None:
        """This machine's profile of an unchanged graph, measured when the old version loaded
        and kept only in memory, is still true: reuse it rather than profile again. A borrowed
        one is not carried: the new files may hold a better one to borrow."""
        if old is None:
            return
        key = self._profiler.key
        for variant, loaded in entry.variants.items():
            previous = old.entry.variants.get(variant)
            if (
                key not in loaded.manifest.profiles
                and previous is not None
                and previous.manifest.onnx_sha256 == loaded.manifest.onnx_sha256
                and self._profiler.measured_here(previous)
            ):
                loaded.manifest.profiles[key] = previous.manifest.profiles[key]

    async def store_profiles(self) -> list[str]:
        """Measure and store this process's profile of every model of the repository that
        lacks one in its files, and load each again from them (module docstring); the models
        done. A model that cannot be measured or written is logged and left as it is."""
        loop = asyncio.get_running_loop()
        done = []
        for folder in model_folders(self.repository):
            if not (folder / MODEL_FILE).is_file():
                continue
            try:
                async with self._lock:  # no load of this model meanwhile
                    stored = await loop.run_in_executor(None, self._profiler.store_measured, folder, self.repository)
            except Exception as exc:  # a folder being replaced, a read-only repository, a graph that fails
                log.warning("%s: this machine's profile was not stored: %s: %s", folder.name, type(exc).__name__, exc)
                continue
            if stored:
                with contextlib.suppress(ModelLoadError):  # logged and kept for RepositoryIndex
                    await self.load(folder.name)
                done.append(folder.name)
        return done

    @staticmethod
    def _unchanged(entry: ModelEntry, old: HostedModel | None) -> dict[str, DynamicBatcher]:
        """The old batchers that can serve the new version as they are."""
        if old is None or _serving_fields(old.entry.config) != _serving_fields(entry.config):
            return {}
        return {
            variant: old.batchers[variant]
            for variant, loaded in entry.variants.items()
            if variant in old.batchers
            and not old.batchers[variant].failed
            and old.entry.variants[variant].manifest.onnx_sha256 == loaded.manifest.onnx_sha256
        }

    @staticmethod
    async def _retire(batchers: list[DynamicBatcher]) -> None:
        """Close (after their queues are served) and drop batchers no longer hosted, then
        give the memory their sessions held back to the system. The caller passes the last
        references to them (the list, emptied here)."""
        await asyncio.gather(*(batcher.close() for batcher in batchers))
        batchers.clear()  # the last references: the sessions are freed here
        await asyncio.get_running_loop().run_in_executor(None, release_freed_memory)

    @staticmethod
    def _summary(
        name: str, old: HostedModel | None, new: HostedModel, kept: dict[str, DynamicBatcher], seconds: float
    ) -> str:
        before = set(old.batchers) if old else set()
        added = [v for v in new.batchers if v not in before]
        removed = sorted(before - set(new.batchers))
        reloaded = [v for v in new.batchers if v in before and v not in kept]
        changes = {"added": added, "reloaded": reloaded, "kept": list(kept), "removed": removed}
        parts = [f"{label} {', '.join(items)}" for label, items in changes.items() if items]
        return f"{'reloaded' if old else 'loaded'} {name} in {seconds:.1f} s: {'; '.join(parts)}"

    @property
    def hosted(self) -> list[str]:
        return list(self._registry)

    def _changed(self) -> None:
        self._on_change()


class RepositoryPoller:
    """Every `period_s`, brings the hosted models in line with the repository folder."""

    def __init__(self, control: ModelControl, period_s: float) -> None:
        self._control = control
        self.period_s = period_s
        self._missing: set[str] = set()  # hosted models whose folder the last scan did not find
        self._empty_warned = False  # said once per stretch of scans that find no model

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.poll_once()
            except Exception:  # polling must outlive one bad scan (a folder vanishing mid-read)
                log.exception("scanning the repository failed; trying again in %.1f s", self.period_s)

    async def poll_once(self) -> list[str]:
        """One scan: what it loaded, reloaded or unloaded. The walk runs in a thread (a slow
        or network volume must not stall the event loop). A scan that finds no model at all
        while models are hosted unloads nothing: an unmounted or emptied volume looks like
        that, and serving on beats answering NOT_FOUND for every model; unload models by
        call (RepositoryModelUnload) instead."""
        control = self._control
        present = await asyncio.get_running_loop().run_in_executor(None, _scan, control.repository)
        if not present and control.hosted:
            if not self._empty_warned:
                log.warning("the repository %s shows no model now: keeping the %d hosted (unmounted? "
                            "unload them by call)", control.repository, len(control.hosted))  # fmt: skip
            self._empty_warned = True
            return []
        self._empty_warned = False
        done = []
        for name, signature in present.items():
            if control.signatures.get(name) != signature:
                with contextlib.suppress(ModelLoadError, InvalidInputError, NotFoundError):
                    done.append(await control.load_here(name))  # every worker follows the folder itself
        gone = {name for name in control.hosted if name not in present}
        for name in gone & self._missing:
            with contextlib.suppress(NotFoundError):
                done.append(await control.unload_here(name, hold=False))
        self._missing = gone
        return done


def _scan(repository: Path) -> dict[str, Signature]:
    """Each model folder's signature (in a thread); a publish that died half-way is put back first."""
    restore_interrupted(repository)
    present = {}
    for folder in model_folders(repository):
        if (folder / MODEL_FILE).is_file():
            with contextlib.suppress(OSError):  # being replaced right now: next time
                present[folder.name] = folder_signature(folder)
    return present


def _serving_fields(config: ModelConfig) -> ModelConfig:
    """What a batcher serves by: the config less the served set, which only says which
    batchers exist (a build that settles its served set keeps the variants already running),
    and less the version numbers, which grow as a build adds variants and are read afresh
    from the entry at each call (core.versions)."""
    return config.model_copy(update={"served_variants": None, "version_numbers": None})
