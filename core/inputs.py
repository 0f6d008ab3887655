"""The input files a run will read, opened (not loaded) so that a dry run reports a missing or broken one.

Only the files the run will actually read are checked: the ``file`` parameters
of each scan's chosen recipe, the ``.ptyd`` of the ``file`` recipe, the
``.ptyr`` of a ``recon`` illumination or sample model, a ``.npy`` background
start, and for TDS the frames (``images_prefix*images_postfix``) and the
auxiliary files of input.par.  Outputs (``save_to_file``, a recipe's
``dfile``) are not inputs.  HDF5 files are opened with h5py, which reads the
superblock and so finds a truncated file; other files have their first bytes
read.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from difframe.errors import DataError

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_file(path: str | os.PathLike, where: str) -> Path:
    """Open ``path`` without loading it; DataError naming ``where`` and the file when it cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_HDF5_SIGNATURE))
    except FileNotFoundError:
        raise DataError(f"{where} = {str(path)!r}: no such file") from None
    except OSError as err:
        raise DataError(f"{where} = {str(path)!r}: cannot be read ({err.strerror or err})") from None
    if head == _HDF5_SIGNATURE:
        import h5py

        try:
            h5py.File(path, "r").close()
        except (OSError, ValueError) as err:
            raise DataError(f"{where} = {str(path)!r}: a broken HDF5 file ({err})") from None
    return path


def ptycho_inputs(run) -> list[tuple[str, str]]:
    """(parameter path, file) of every input file of the run's scans."""
    found = []
    for label, scan in run.params.scans.items():
        where = f"scans.{label}"
        source = scan.data.source or "file"
        name = run.plugins.resolve("recipe", source)
        if name == "file" and scan.data.dfile:
            found.append((f"{where}.data.dfile", str(scan.data.dfile)))
        recipe = (scan.data.get("recipe") or {}).get(name) or {}
        for path, node in run.tree.subtree(f"scan.data.recipe.{name}").items() if recipe else ():
            key = path.rpartition(".")[2]
            if "file" in node.types and recipe.get(key):
                found.append((f"{where}.data.recipe.{name}.{key}", str(recipe[key])))
        for part in ("illumination", "sample"):
            model = scan[part]
            if isinstance(model.model, str) and model.model == "recon" and model.recon.rfile:
                pattern = str(model.recon.rfile)
                matches = sorted(glob.glob(pattern)) or [pattern]
                found.append((f"{where}.{part}.recon.rfile", matches[-1]))
        init = scan.background.init
        if scan.background.active and isinstance(init, str) and init.endswith(".npy"):
            found.append((f"{where}.background.init", init))
    return found


def tds_inputs(tds) -> list[tuple[str, str]]:
    """(parameter, file) of every input file of a TDS run: auxiliary files, the harvest or every frame."""
    from difframe.tds.workflow import frame_files

    found = [(f"tds.{name}", os.path.expanduser(str(tds[name])))
             for name in ("filter_file", "normalisation_file", "centering_file", "file_maxima", "load_from_file")
             if tds.get(name) not in (None, "", "None")]
    if not any(where == "tds.load_from_file" for where, _ in found):
        found += [("tds.images_prefix", str(f)) for f in frame_files(tds)]
    return found


def check_inputs(run) -> list[tuple[str, str]]:
    """Open every input file of ``run``; returns (parameter, file) of each, DataError at the first bad one."""
    tds = run.params.get("tds")
    found = tds_inputs(tds) if tds is not None else ptycho_inputs(run)
    for where, path in found:
        check_file(path, where)
    return found
