"""``difframe plot``: a picture of a ``.ptyr`` reconstruction."""

from __future__ import annotations

HELP = "draw a .ptyr reconstruction: object amplitude/phase, probe modes, error curves"
DESCRIPTION = """\
Read a reconstruction file (.ptyr, written by difframe or ptypy) and write one
PNG with the amplitude and phase of every object (the phase on a sequential
map over its range, a cyclic one only when it spans 2 pi), every probe mode
(phase as hue, amplitude as brightness, with its share of the power and a
colour wheel as key), a scale bar in physical units on every image, and the
error curves of the iterations it records on a log axis with the engine
switches marked.  An existing output is replaced only once the new picture is
complete.

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
    last = rec.iter_info[-1] if rec.iter_info else {}
    state = f": {last.get('engine', '?')}, iteration {last['iterations']}" if last else ""
    save_png(out, rec.objects, rec.probes, rec.iter_info, f"{Path(args.file).name}{state}", scanned)
    print(f"wrote {out}")
    return 0
