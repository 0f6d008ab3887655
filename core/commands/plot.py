"""``difframe plot``: a picture of a ``.ptyr`` reconstruction."""

from __future__ import annotations

HELP = "draw a .ptyr reconstruction: object amplitude/phase, probe modes, error curves"
DESCRIPTION = """\
Read a reconstruction file (.ptyr, written by difframe or ptypy) and write one
PNG with the amplitude and phase of every object, every probe mode (phase as
hue, amplitude as brightness, with its share of the power) and the error
curves of the iterations it records.  An existing output is replaced only once
the new picture is complete.

examples:
  difframe plot recons/sim/sim_ML_0150.ptyr -o result.png
  difframe plot dumps/sim/sim_DM_0040.ptyr                 writes dumps/sim/sim_DM_0040.png"""


def add_arguments(parser) -> None:
    parser.add_argument("file", metavar="FILE.ptyr", help="reconstruction file")
    parser.add_argument("-o", "--output", metavar="PNG", help="picture to write (default: FILE with .png)")


def main(args) -> int:
    from pathlib import Path

    import numpy as np

    from difframe.ptycho.plotting import save_png
    from difframe.ptycho.ptyr import read_ptyr

    rec = read_ptyr(args.file)
    out = Path(args.output) if args.output else Path(args.file).with_suffix(".png")
    scanned = {}
    for sid, st in rec.objects.items():
        pos = rec.positions.get(sid)
        if pos is not None:
            scanned[sid] = (np.asarray(pos) - np.ravel(st["_origin"])) / np.ravel(st["_psize"])
    save_png(out, {k: np.asarray(v["data"]) for k, v in rec.objects.items()},
             {k: np.asarray(v["data"]) for k, v in rec.probes.items()}, rec.iter_info,
             f"{Path(args.file).name}", scanned)
    print(f"wrote {out}")
    return 0
