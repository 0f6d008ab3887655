"""``PreparedData``: what every ptychography recipe returns and the model consumes.

One record per scan, independent of where the frames came from (simulation,
``.ptyd``, CXI, a facility loader), so engines never see file formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from difframe.errors import DataError

PROPAGATIONS = ("farfield", "nearfield")


@dataclass
class PreparedData:
    """Diffraction frames of one scan, cropped and oriented, with their geometry.

    ``data`` (N, H, W) float32 counts; ``mask`` (H, W) or (N, H, W) bool, True
    where a pixel is valid; ``positions`` (N, 2) float64 metres (y, x) of the
    sample relative to the beam; ``psize_m`` is the detector pixel (y, x) in
    metres; ``center`` the (row, col) of the beam in ``data`` (for nearfield, the
    middle of the frame); ``meta`` keeps free-form provenance (source file,
    preparation parameters).
    """

    label: str
    data: np.ndarray
    mask: np.ndarray
    positions: np.ndarray
    energy_kev: float
    distance_m: float
    psize_m: tuple[float, float]
    center: tuple[float, float]
    propagation: str = "farfield"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data, dtype=np.float32)
        self.mask = np.asarray(self.mask, dtype=bool)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.psize_m = (float(self.psize_m[0]), float(self.psize_m[1]))
        self.center = (float(self.center[0]), float(self.center[1]))
        self.energy_kev = float(self.energy_kev)
        self.distance_m = float(self.distance_m)
        self.validate()

    @property
    def num_frames(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[1]), int(self.data.shape[2]))

    @property
    def wavelength_m(self) -> float:
        """Wavelength from the photon energy (hc = 12.398419843 keV Angstrom)."""
        return 12.398419843320026e-10 / self.energy_kev

    def frame_mask(self) -> np.ndarray:
        """The mask broadcast to (N, H, W), for code that wants one per frame."""
        return np.broadcast_to(self.mask, self.data.shape)

    def validate(self) -> None:
        """Raise one DataError naming the first inconsistent field of scan ``label``."""
        where = f"prepared data of scan {self.label!r}"
        if self.data.ndim != 3 or 0 in self.data.shape:
            raise DataError(f"{where}: data must be a non-empty (N, H, W) stack, got shape {self.data.shape}")
        if self.mask.shape not in (self.data.shape, self.data.shape[1:]):
            raise DataError(f"{where}: mask shape {self.mask.shape} fits neither (H, W) nor (N, H, W) "
                            f"of data {self.data.shape}")
        if self.positions.shape != (self.data.shape[0], 2):
            raise DataError(f"{where}: positions shape {self.positions.shape} does not match "
                            f"{self.data.shape[0]} frames (expected ({self.data.shape[0]}, 2))")
        if not np.isfinite(self.positions).all():
            raise DataError(f"{where}: positions contain NaN or infinity")
        bad = ~np.isfinite(self.data).reshape(self.data.shape[0], -1).all(axis=1)
        if bad.any():
            raise DataError(f"{where}: frames {np.flatnonzero(bad)[:10].tolist()} contain NaN or infinity")
        for name in ("energy_kev", "distance_m"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise DataError(f"{where}: {name} must be positive, got {value}")
        if not all(np.isfinite(p) and p > 0 for p in self.psize_m):
            raise DataError(f"{where}: psize_m must be positive, got {self.psize_m}")
        if self.propagation not in PROPAGATIONS:
            raise DataError(f"{where}: propagation {self.propagation!r} is not one of {PROPAGATIONS}")
