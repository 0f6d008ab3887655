"""``PreparedData``: what every ptychography recipe returns and the model consumes.

One record per scan, independent of where the frames came from (simulation,
``.ptyd``, CXI, a facility loader), so engines never see file formats.  Under
MPI a record holds one rank's block of the frames but the positions of all of
them; statistics over all frames (:meth:`PreparedData.frame_totals`,
:meth:`PreparedData.mean_frame`) are then sums over the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from difframe.errors import DataError
from difframe.limits import array_bytes, check_allocation
from difframe.optics import farfield_object_psize
from difframe.parallel import Ranks

PROPAGATIONS = ("farfield", "nearfield")


@dataclass
class PreparedData:
    """Diffraction frames of one scan, cropped and oriented, with their geometry.

    ``data`` (n, H, W) float32 counts; ``mask`` (H, W) or (n, H, W) bool, True
    where a pixel is valid; ``positions`` (N, 2) float64 metres (y, x) of the
    sample relative to the beam, for all N frames of the scan; ``psize_m`` is
    the detector pixel (y, x) in metres; ``center`` the (row, col) of the beam
    in ``data`` (for nearfield, the middle of the frame); ``meta`` keeps
    free-form provenance (source file, preparation parameters).

    ``data`` holds frames ``first .. first + n - 1`` of the N: all of them
    (``first`` = 0, n = N), or the block ``ranks.share(N)`` of this MPI rank.
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
    first: int = 0
    ranks: Ranks = field(default_factory=Ranks)

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
        """Frames in the whole scan (all ranks)."""
        return int(self.positions.shape[0])

    @property
    def held(self) -> slice:
        """The scan's frames that ``data`` holds."""
        return slice(self.first, self.first + int(self.data.shape[0]))

    @property
    def holds_all(self) -> bool:
        return self.held == slice(0, self.num_frames)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[1]), int(self.data.shape[2]))

    @property
    def wavelength_m(self) -> float:
        """Wavelength from the photon energy (hc = 12.398419843 keV Angstrom)."""
        return 12.398419843320026e-10 / self.energy_kev

    def frame_mask(self) -> np.ndarray:
        """The mask broadcast to (n, H, W), for code that wants one per frame."""
        return np.broadcast_to(self.mask, self.data.shape)

    def frame_totals(self) -> np.ndarray:
        """(N,) float64 valid counts of every frame of the scan.

        Collective when ranks hold shares: every rank must call it.
        """
        totals = np.zeros(self.num_frames)
        totals[self.held] = np.where(self.frame_mask(), self.data, 0).sum(axis=(1, 2), dtype=np.float64)
        if not self.holds_all:
            self.ranks.sum_arrays(totals)
        return totals

    def mean_frame(self) -> np.ndarray:
        """(H, W) float64 mean valid intensity over all frames of the scan (0 where never valid).

        Collective when ranks hold shares: every rank must call it.
        """
        counts = np.where(self.frame_mask(), self.data, 0).sum(axis=0, dtype=np.float64)
        valid = self.frame_mask().sum(axis=0, dtype=np.float64)
        if not self.holds_all:
            self.ranks.sum_arrays(counts, valid)
        return np.where(valid > 0, counts / np.maximum(valid, 1), 0.0)

    def validate(self) -> None:
        """Raise one DataError naming the first inconsistent field of scan ``label``."""
        where = f"prepared data of scan {self.label!r}"
        if self.data.ndim != 3 or 0 in self.data.shape:
            raise DataError(f"{where}: data must be a non-empty (N, H, W) stack, got shape {self.data.shape}")
        if self.mask.shape not in (self.data.shape, self.data.shape[1:]):
            raise DataError(f"{where}: mask shape {self.mask.shape} fits neither (H, W) nor (N, H, W) "
                            f"of data {self.data.shape}")
        if self.positions.ndim != 2 or self.positions.shape[1] != 2:
            raise DataError(f"{where}: positions shape {self.positions.shape} is not (N, 2)")
        share = self.ranks.share(self.num_frames)
        if not (self.holds_all or self.held == share):
            if self.ranks.size == 1:
                raise DataError(f"{where}: positions shape {self.positions.shape} does not match "
                                f"{self.data.shape[0]} frames (expected ({self.data.shape[0]}, 2))")
            raise DataError(f"{where}: data hold frames {self.held.start}..{self.held.stop - 1} of "
                            f"{self.num_frames}; expected all of them or rank {self.ranks.rank}'s share "
                            f"{share.start}..{share.stop - 1}")
        if not np.isfinite(self.positions).all():
            raise DataError(f"{where}: positions contain NaN or infinity")
        bad = ~np.isfinite(self.data).reshape(self.data.shape[0], -1).all(axis=1)
        if bad.any():
            raise DataError(f"{where}: frames {(self.first + np.flatnonzero(bad))[:10].tolist()} contain NaN or infinity")
        for name in ("energy_kev", "distance_m"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise DataError(f"{where}: {name} must be positive, got {value}")
        if not all(np.isfinite(p) and p > 0 for p in self.psize_m):
            raise DataError(f"{where}: psize_m must be positive, got {self.psize_m}")
        if self.propagation not in PROPAGATIONS:
            raise DataError(f"{where}: propagation {self.propagation!r} is not one of {PROPAGATIONS}")
        self.check_object_frame()

    def check_object_frame(self) -> None:
        """Refuse positions and pixel sizes whose object frame (one complex64 layer, the least any engine keeps)
        would not fit the memory budget: one stray position at 1 m asks for petabytes."""
        if self.propagation == "nearfield":
            pixel = np.asarray(self.psize_m)
        else:
            pixel = farfield_object_psize(self.wavelength_m, self.distance_m, self.shape, self.psize_m)
        span = np.ptp(self.positions, axis=0) if self.num_frames else np.zeros(2)
        sides = span / pixel + np.asarray(self.shape) + 8
        source = self.meta.get("source")
        check_allocation(array_bytes(sides, 8),
                         f"scan {self.label!r}{f' ({source})' if source else ''}: the object frame of "
                         f"{sides[0]:.4g} x {sides[1]:.4g} pixels (positions spanning {span[0]:.3g} x {span[1]:.3g} m "
                         f"at an object pixel of {pixel[0]:.3g} x {pixel[1]:.3g} m)")
