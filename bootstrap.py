#!/usr/bin/env python3
"""Set difframe up in ./.venv and run its demo or its tests: needs only Python >= 3.10.

    python3 bootstrap.py demo    # install, then simulate + reconstruct (DM, ML) and a synthetic TDS fit
    python3 bootstrap.py test    # install, then run the whole test suite

The virtual environment is reused; difframe and its dependencies (with the MPI,
OpenCL, refractive-index and test extras) are reinstalled only when
pyproject.toml changed.  Outputs of the demo go to ./demo-output/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".difframe-installed"
DEMO_DIR = ROOT / "demo-output"


def sh(*cmd: str | os.PathLike, cwd: Path = ROOT) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    result = subprocess.run([str(c) for c in cmd], cwd=cwd)
    if result.returncode:
        sys.exit(result.returncode)


def install() -> None:
    if sys.version_info < (3, 10):
        sys.exit(f"difframe needs Python >= 3.10; this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.is_file() and STAMP.read_text() == digest:
        return
    start = time.perf_counter()
    if not (BIN / "python").exists():
        sh(sys.executable, "-m", "venv", VENV)
    sh(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    sh(BIN / "python", "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[all]")
    STAMP.write_text(digest)
    print(f"installed in {time.perf_counter() - start:.0f} s", flush=True)


def demo() -> None:
    DEMO_DIR.mkdir(exist_ok=True)
    difframe = BIN / "difframe"
    sh(difframe, "-v", "run", ROOT / "examples" / "ptycho_sim.toml", "-p", f'io.paths.home="{DEMO_DIR / "ptycho"}"')
    if (DEMO_DIR / "mgo-run").is_dir():  # the demo's own earlier stack: simulate refuses to overwrite it
        shutil.rmtree(DEMO_DIR / "mgo-run")
    sh(difframe, "tds", "simulate", ROOT / "examples" / "tds" / "mgo.toml", "-o", DEMO_DIR / "mgo-run")
    sh(difframe, "-v", "tds", DEMO_DIR / "mgo-run" / "input.par")
    print(f"\nresults and pictures are under {DEMO_DIR}")


def test(extra: list[str]) -> None:
    sh(BIN / "python", "-m", "pytest", "-q", *extra)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("demo", "test", "install"):
        sys.exit(__doc__)
    install()
    if argv[0] == "demo":
        demo()
    elif argv[0] == "test":
        test(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
