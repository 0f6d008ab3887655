"""Built-in test images, generated (no downloads, no image files): probes and objects for simulations.

Every image is a real array in [0, 1] computed from a closed form, so tests
know exactly what a simulation started from.  ``complex_image`` turns one into
a field: amplitude and a phase proportional to the same image.
"""

from __future__ import annotations

import numpy as np

from difframe.errors import ParameterError


def _grid(shape) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in [-1, 1) along each axis, 0 at pixel N//2."""
    ny, nx = int(shape[0]), int(shape[1])
    y = (np.arange(ny) - ny // 2) / (ny / 2)
    x = (np.arange(nx) - nx // 2) / (nx / 2)
    return y[:, None], x[None, :]


def moon(shape) -> np.ndarray:
    """A crescent: a soft disk of radius 0.5 minus an offset disk (a probe with structure)."""
    y, x = _grid(shape)
    disk = 0.5 * (1 - np.tanh((np.hypot(y, x) - 0.5) / 0.03))
    bite = 0.5 * (1 - np.tanh((np.hypot(y + 0.15, x - 0.2) - 0.35) / 0.03))
    return np.clip(disk - 0.8 * bite, 0.0, 1.0)


def flower(shape) -> np.ndarray:
    """A seven-petal rose with a centre disk and fine rings: features at every scale."""
    y, x = _grid(shape)
    r, theta = np.hypot(y, x), np.arctan2(y, x)
    petals = 0.5 * (1 - np.tanh((r - 0.75 * np.abs(np.cos(3.5 * theta))) / 0.02))
    centre = 0.5 * (1 - np.tanh((r - 0.15) / 0.02))
    rings = 0.5 + 0.5 * np.cos(40 * np.pi * r)
    return np.clip(0.6 * petals * (0.7 + 0.3 * rings) + 0.4 * centre, 0.0, 1.0)


def siemens(shape, spokes: int = 36) -> np.ndarray:
    """A Siemens star: ``spokes`` wedges, the classic resolution target."""
    y, x = _grid(shape)
    star = (np.cos(spokes / 2 * np.arctan2(y, x)) > 0).astype(float)
    return star * (np.hypot(y, x) < 0.9)


IMAGES = {"moon": moon, "flower": flower, "siemens": siemens}


def image(name: str, shape) -> np.ndarray:
    """The built-in image ``name`` at ``shape``; ParameterError listing the known names."""
    if name not in IMAGES:
        raise ParameterError(f"unknown built-in image {name!r}; known: {', '.join(sorted(IMAGES))}")
    return IMAGES[name](shape)


def complex_image(name: str, shape, phase: float = np.pi / 2, min_amplitude: float = 0.2) -> np.ndarray:
    """Field with amplitude ``min_amplitude + (1 - min_amplitude) * img`` and phase ``phase * img``."""
    img = image(name, shape)
    return (min_amplitude + (1 - min_amplitude) * img) * np.exp(1j * phase * img)
