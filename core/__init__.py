"""difframe: inverse problems on X-ray detector data, as a small core plus plugins.

Heavy parts (numpy maths, engines, HDF5) are imported on first use, so that
``import difframe`` and ``difframe --help`` stay fast.
"""

from difframe.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = ["hookimpl", "hookspec", "Run", "PluginManager", "Param", "__version__"]


def __getattr__(name):
    if name == "Run":
        from difframe.run import Run

        return Run
    if name == "PluginManager":
        from difframe.manager import PluginManager

        return PluginManager
    if name == "Param":
        from difframe.param import Param

        return Param
    raise AttributeError(f"module 'difframe' has no attribute {name!r}")
