"""Detector templates: the registered geometry is the manufacturers' (modules x module + gaps)."""

import numpy as np
import pytest

from difframe.detector import sensitive_mask
from difframe.manager import PluginManager

#: name -> (rows, cols) from the Dectris / ESRF data sheets
DATASHEET_SHAPES = {
    "pilatus300k": (619, 487),
    "pilatus2m": (1679, 1475),
    "pilatus6m": (2527, 2463),
    "eiger4m": (2167, 2070),
    "eiger16m": (4371, 4150),
    "eiger2_4m": (2162, 2068),
    "eiger2_16m": (4362, 4148),
    "frelon2k": (2048, 2048),
    "frelon4m": (2048, 2048),
}


@pytest.fixture(scope="module")
def templates():
    return PluginManager().specs("detector_template")


@pytest.mark.parametrize("name", sorted(DATASHEET_SHAPES))
def test_shape_is_modules_times_module_plus_gaps(templates, name):
    spec = templates[name]
    assert spec.shape == DATASHEET_SHAPES[name]
    if spec.module_shape is None:
        assert spec.gap == (0, 0)
        return
    for axis in (0, 1):
        pitch = spec.module_shape[axis] + spec.gap[axis]
        n_modules, rest = divmod(spec.shape[axis] + spec.gap[axis], pitch)
        assert rest == 0 and n_modules >= 1
    dead = (~sensitive_mask(spec)).sum()
    rows_m = (spec.shape[0] + spec.gap[0]) // (spec.module_shape[0] + spec.gap[0])
    cols_m = (spec.shape[1] + spec.gap[1]) // (spec.module_shape[1] + spec.gap[1])
    assert spec.shape[0] * spec.shape[1] - dead == rows_m * cols_m * np.prod(spec.module_shape)


def test_pixel_sizes(templates):
    for name, spec in templates.items():
        expected = {"pil": 172e-6, "eig": 75e-6}.get(name[:3])
        if expected:
            assert spec.pixel_size == (expected, expected)


def test_real_frames_fit_their_templates(real_data, templates):
    """The dead bands of the real Pilatus 6M and Eiger2 16M frames are where the templates put gaps."""
    import fabio

    for name, template in (("thau_3_2_0001.cbf.bz2", "pilatus6m"), ("dlsnxs2cbf_therm_0001.cbf.gz", "eiger2_16m")):
        data = fabio.open(str(real_data / name)).data
        spec = templates[template]
        assert data.shape == spec.shape
        gaps = ~sensitive_mask(spec)
        assert (data[gaps] < 0).mean() > 0.99  # gap pixels are flagged negative by the detector


def test_frelon_alias(templates):
    manager = PluginManager()
    assert manager.resolve("detector_template", "frelon") == "frelon2k"
