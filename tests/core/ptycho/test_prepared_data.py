"""PreparedData: coercion of dtypes and one clear error per inconsistent field."""

import numpy as np
import pytest

from difframe.errors import DataError
from difframe.ptycho.data import PreparedData


def make(**over):
    kw = dict(label="s", data=np.ones((3, 4, 5), dtype=np.int32), mask=np.ones((4, 5)),
              positions=np.zeros((3, 2)), energy_kev=12.398419843320026, distance_m=1.0,
              psize_m=(1e-5, 2e-5), center=(2, 2.5))
    kw.update(over)
    return PreparedData(**kw)


def test_coerces_types_and_derives_geometry():
    d = make()
    assert d.data.dtype == np.float32 and d.mask.dtype == bool and d.positions.dtype == np.float64
    assert d.num_frames == 3 and d.shape == (4, 5)
    assert d.wavelength_m == pytest.approx(1e-10)
    assert d.frame_mask().shape == (3, 4, 5)


@pytest.mark.parametrize("over, culprit", [
    (dict(data=np.ones((4, 5))), "data"),
    (dict(mask=np.ones((5, 4))), "mask"),
    (dict(positions=np.zeros((2, 2))), "positions"),
    (dict(data=np.where(np.arange(60).reshape(3, 4, 5) == 23, np.nan, 1.0)), "frames [1]"),
    (dict(energy_kev=0.0), "energy_kev"),
    (dict(psize_m=(0, 1e-5)), "psize_m"),
    (dict(propagation="sideways"), "propagation"),
])
def test_each_inconsistency_names_its_field(over, culprit):
    with pytest.raises(DataError, match="scan 's'") as exc:
        make(**over)
    assert culprit in str(exc.value)
