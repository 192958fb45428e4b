"""The wheel installs one package, `slimserve`, and a plain install of it serves.

Built from this checkout, installed into a fresh virtual environment, and run as an
installed user would run it (`python -m slimserve.cli serve`) on the tiny repository.
The fresh environment finds the serving dependencies through a path entry to this project's
environment, with `slimserve` itself and every build-only package kept out of reach.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from loadtest.serving import RunningServer
from tests.build_free import poison_build_packages

ROOT = Path(__file__).resolve().parent


@pytest.mark.slow
def test_the_wheel_holds_one_package_and_serves_from_a_fresh_venv(repository: Path, tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(ROOT.parent)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("slimserve-*.whl")
    files = zipfile.ZipFile(wheel).namelist()
    names = {name.split("/")[0] for name in files}
    assert {n for n in names if not n.endswith(".dist-info")} == {"slimserve"}, names
    # The benchmarks, the peers' adapters and the proto generator stay in the checkout.
    assert not [f for f in files if "loadtest" in f or "bench" in f or f.endswith("generate_protos.py")], files

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # Dependencies from this project's environment (a plain path entry: its editable finder and
    # its own .pth files are not run), build-only packages made unimportable.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    poison_build_packages(site)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [python, "-c", "import slimserve, slimserve.cli; print(slimserve.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    ).stdout  # fmt: skip
    assert where.startswith(str(site)), where  # the installed copy, not this checkout

    server = RunningServer(repository, tmp_path, python=python, cwd=tmp_path, env={"PYTHONPATH": None})  # as `env`
    try:
        probe = subprocess.run(
            [python, "-m", "slimserve.cli", "health", "--address", server.address],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stdout + probe.stderr
    finally:
        code = server.stop()
    output = server.log_path.read_text()
    assert code == 0 and "Traceback" not in output, output[-3000:]
