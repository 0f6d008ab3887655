"""difframe.ptycho.vlog against numpy's logarithm (an independent implementation) over its whole domain."""

import numpy as np
import pytest

from difframe.ptycho.vlog import vlog_array


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_within_three_ulp_of_numpy(dtype):
    info = np.finfo(dtype)
    rng = np.random.default_rng(0)
    x = np.concatenate([
        np.exp(rng.uniform(np.log(info.tiny), np.log(info.max), 200_000)),  # every exponent
        rng.uniform(0.5, 2.0, 200_000),  # around 1, where the result is small
        rng.uniform(np.sqrt(0.5) * 0.999, np.sqrt(2.0) * 1.001, 10_000),  # the mantissa's range edges
        [info.tiny, info.tiny / 3, info.smallest_subnormal, info.max, 1.0, 2.0, 0.5, np.sqrt(2.0)],
    ]).astype(dtype)
    x = np.concatenate([x, np.nextafter(x[x < info.max], dtype(np.inf))])
    got = np.empty_like(x)
    vlog_array(x, got)
    exact = np.log(x.astype(np.longdouble))
    ulps = np.abs(got - exact) / np.spacing(np.abs(exact).astype(dtype)).astype(np.longdouble)
    assert ulps.max() <= 3.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_stays_nan(dtype):
    x = np.array([1.0, np.nan, 3.0], dtype)
    got = np.empty_like(x)
    vlog_array(x, got)
    assert np.isnan(got[1]) and np.allclose(got[[0, 2]], np.log(x[[0, 2]]))
