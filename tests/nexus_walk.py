"""Walk a file's NeXus default-plot chain from the root, as silx and PyMca do (independently of difframe.nexus)."""

from types import SimpleNamespace

import h5py
import numpy as np


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def default_plot(path) -> SimpleNamespace:
    """root@default -> NXentry@default -> NXdata@signal; every named @axes dataset exists, fits its
    dimension and has units.  Returns the NXdata path, signal values, axis names and values, units."""
    with h5py.File(path, "r") as f:
        assert _text(f.attrs.get("NX_class", "")) == "NXroot", "root is not NXroot"
        entry = f[_text(f.attrs["default"])]
        assert _text(entry.attrs["NX_class"]) == "NXentry", f"{entry.name} is not an NXentry"
        data = entry[_text(entry.attrs["default"])]
        assert isinstance(data, h5py.Group) and _text(data.attrs["NX_class"]) == "NXdata", f"{data.name} is not NXdata"
        signal = data[_text(data.attrs["signal"])]
        names = [_text(a) for a in np.atleast_1d(data.attrs.get("axes", []))]
        scatter = signal.ndim == 1 and len(names) > 1
        assert scatter or len(names) == signal.ndim, f"{data.name}: {len(names)} axes for a {signal.ndim}-d signal"
        axes, units = {}, {}
        for dim, name in enumerate(names):
            if name == ".":
                continue
            axis = data[name]
            assert axis.ndim == 1 and len(axis) == signal.shape[0 if scatter else dim], f"{axis.name} does not fit"
            assert "units" in axis.attrs, f"{axis.name} has no units"
            axes[name], units[name] = axis[()], _text(axis.attrs["units"])
        return SimpleNamespace(path=data.name, signal=signal[()], signal_name=signal.name, axes=axes, units=units,
                               names=names, attrs={k: data.attrs[k] for k in data.attrs})


def silx_default_signal(path):
    """The signal silx's own NXdata reader picks as the default plot (None when silx is not installed)."""
    try:
        from silx.io import nxdata
    except ImportError:
        return None
    with h5py.File(path, "r") as f:
        found = nxdata.get_default(f)
        assert found is not None and found.is_valid, f"silx finds no valid default NXdata in {path}"
        return found.signal.name
