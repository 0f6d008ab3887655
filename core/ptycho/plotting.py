"""Pictures of a reconstruction: object amplitude and phase, probe modes, error curves; movies.

Everything takes plain arrays (``{ID: (layers, H, W)}``) and ptypy-style
``iter_info`` records, so a run in progress and a ``.ptyr`` read back are drawn
the same way.  matplotlib (Agg) is imported inside the functions.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np

from difframe.errors import DataError
from difframe.fileio import atomic_path

log = logging.getLogger("difframe.ptycho.plotting")

ERROR_LABELS = ("Fourier error", "deviance per pixel", "exit-wave change")
_FFMPEG_FORMATS = {".mpg": "mpeg", ".mpeg": "mpeg", ".mp4": "mp4", ".avi": "avi", ".mkv": "matroska"}


def _complex_rgb(field: np.ndarray) -> np.ndarray:
    """Phase as hue, amplitude as brightness: one picture per probe mode."""
    from matplotlib.colors import hsv_to_rgb

    amp = np.abs(field)
    hsv = np.stack([(np.angle(field) + np.pi) / (2 * np.pi), np.ones_like(amp),
                    amp / max(float(amp.max()), 1e-30)], axis=-1)
    return hsv_to_rgb(hsv)


def _window(obj: np.ndarray, positions_px: np.ndarray | None) -> tuple[slice, slice]:
    """The scanned part of an object (padding trimmed), or all of it."""
    if positions_px is None or len(positions_px) == 0:
        return slice(None), slice(None)
    lo = np.clip(np.floor(positions_px.min(axis=0)).astype(int), 0, None)
    hi = np.ceil(positions_px.max(axis=0)).astype(int) + 1
    return slice(lo[0], hi[0]), slice(lo[1], hi[1])


def draw(objects: dict, probes: dict, iter_info: list, title: str = "", scanned: dict | None = None):
    """A matplotlib Figure: per object storage amplitude and phase, probe modes, error curves."""
    from matplotlib.figure import Figure

    n_modes = max((p.shape[0] for p in probes.values()), default=1)
    rows = max(len(objects), len(probes), 1)
    cols = 2 + n_modes + 1
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for row, (oid, obj) in enumerate(objects.items()):
        sl = _window(obj, (scanned or {}).get(oid))
        mode0 = obj[0][sl]
        im = axes[row, 0].imshow(np.abs(mode0), cmap="gray")
        axes[row, 0].set_title(f"object {oid}: amplitude")
        fig.colorbar(im, ax=axes[row, 0], shrink=0.8)
        im = axes[row, 1].imshow(np.angle(mode0), cmap="twilight")
        axes[row, 1].set_title("phase [rad]")
        fig.colorbar(im, ax=axes[row, 1], shrink=0.8)
    for row, (pid, probe) in enumerate(probes.items()):
        power = (np.abs(probe) ** 2).sum(axis=(-2, -1))
        for m in range(probe.shape[0]):
            axes[row, 2 + m].imshow(_complex_rgb(probe[m]))
            axes[row, 2 + m].set_title(f"probe {pid} mode {m} ({100 * power[m] / power.sum():.0f}%)")
    ax = axes[0, -1]
    if iter_info:
        ax.set_axis_on()
        its = np.array([rec["iterations"] for rec in iter_info])  # over the whole run
        errs = np.array([np.ravel(rec["error"])[:3] for rec in iter_info], dtype=float)
        for k, label in enumerate(ERROR_LABELS):
            curve = errs[:, k]
            ok = np.isfinite(curve)
            if ok.any() and np.nanmax(np.abs(curve[ok])) > 0:
                ax.plot(its[ok], curve[ok] / np.nanmax(np.abs(curve[ok])), label=label)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("iteration")
        ax.set_title("errors (each / its maximum)")
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def save_png(path, objects: dict, probes: dict, iter_info: list, title: str = "", scanned: dict | None = None) -> Path:
    """Draw and write a PNG atomically; returns the path."""
    fig = draw(objects, probes, iter_info, title, scanned)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return Path(path)


def make_movie(frames: list, path) -> Path:
    """A movie from PNG ``frames``: ffmpeg when installed, else an animated GIF (suffix .gif)."""
    if not frames:
        raise DataError(f"no plot frames to make the movie {path} from")
    path = Path(path)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        listing = "".join(f"file '{Path(f).resolve()}'\nduration 0.2\n" for f in frames)
        with atomic_path(path) as tmp:
            listfile = tmp.with_suffix(".txt")
            listfile.write_text(listing)
            try:
                subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i",
                                str(listfile), "-f", _FFMPEG_FORMATS.get(path.suffix.lower(), "mpeg"), str(tmp)], check=True)
            finally:
                listfile.unlink(missing_ok=True)
        return path
    from PIL import Image

    path = path.with_suffix(".gif")
    images = [Image.open(f).convert("RGB") for f in frames]
    size = images[0].size
    images = [im if im.size == size else im.resize(size) for im in images]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=200, loop=0)
    log.info("no ffmpeg: wrote the movie as an animated GIF %s", path)
    return path
