"""scan.sharing: *_share_with (label or index) joins storages, *_share_power reaches the scan's views.

The engines weight each scan's update by the powers (dm.py, ml.py, pie.py); here: which storages the model
builds for a parameter tree, and that a shared object's frame covers every member's positions.
"""

import numpy as np

from difframe.manager import PluginManager
from difframe.params import ParamTree
from difframe.ptycho import model as pm
from difframe.ptycho.data import PreparedData
from difframe.ptycho.workflow import sharing_table


def prepared(label, shift):
    pos = np.stack(np.meshgrid(np.arange(3), np.arange(3), indexing="ij"), -1).reshape(-1, 2) * 4e-7 + shift
    return PreparedData(label=label, data=np.ones((9, 16, 16), np.float32), mask=np.ones((16, 16), bool),
                        positions=pos, energy_kev=6.2, distance_m=1.0, psize_m=(1e-4, 1e-4), center=(8, 8))


def test_share_with_by_label_and_index_and_powers_reach_the_scans():
    tree = ParamTree.build(PluginManager())
    scans = tree.resolve({"scans": {
        "a": {},
        "b": {"sharing": {"probe_share_with": "a", "probe_share_power": 0.5}},
        "c": {"sharing": {"object_share_with": 0, "object_share_power": 2.0}},  # index 0: scan a
    }}).scans
    data = {"a": prepared("a", 0.0), "b": prepared("b", 0.0), "c": prepared("c", 3e-6)}
    model = pm.build_model(data, sharing_table(scans), lambda label, shape, psize: np.ones((1, *shape), complex),
                           lambda label, shape, psize, origin: np.ones((1, *shape), complex))
    assert list(model.probes) == ["a", "c"] and list(model.objects) == ["a", "b"]
    views = {s.label: s for s in model.scans}
    assert (views["b"].probe_id, views["b"].object_id, views["b"].probe_power) == ("a", "b", 0.5)
    assert (views["c"].object_id, views["c"].probe_id, views["c"].object_power) == ("a", "c", 2.0)
    assert (views["a"].object_power, views["a"].probe_power) == (1.0, 1.0)
    shared = model.objects["a"]  # a's and c's windows (3 um apart) both lie inside the one object
    for label in ("a", "c"):
        corners = views[label].corners
        assert corners.min() >= 0 and (corners + 16 <= np.array(shared.data.shape[-2:])).all()
    assert shared.data.shape[-1] > model.objects["b"].data.shape[-1] + 3e-6 / shared.psize[1] - 1
