"""engine.DM.* and engine.ML.* as the DM and ML plugins declare them, against the reference text."""

import re

import pytest

from difframe.manager import PluginManager
from difframe.params import ParamTree

REFERENCE = "reference/000_45fb112b10c2865c.txt"
# reference limits that cannot apply to the node, each dropped with a note in the node's doc
DROPPED = {"engine.DM.update_object_first", "engine.ML.type", "engine.ML.reg_del2", "engine.ML.scale_precond",
           "engine.ML.smooth_gradient"}


def reference_engine_nodes(text):
    """path -> (type, default text, lower limit text or None) for engine.DM.* and engine.ML.*."""
    nodes = {}
    for m in re.finditer(r"^\.\. py:data:: \.(engine\.(?:DM|ML)\.\w+)\((\w+)\).*?\*default\* = ``(.*?)``",
                         text, flags=re.M | re.S):
        path, type_, default = m.groups()
        low = re.search(r"\(>([^)]*)\)$", default)
        nodes[path] = (type_, default[: low.start()].strip() if low else default, low.group(1) if low else None)
    return nodes


#: nodes difframe adds to the reference's engine subtrees
ADDED = {"engine.DM.floating_intensities", "engine.ML.illumination_precond", "engine.ML.illumination_regularisation",
         "engine.ML.subpixel_positions"}


@pytest.fixture(scope="module")
def tree():
    return ParamTree.build(PluginManager())


def test_engine_nodes_match_the_reference(tree, shared_dir):
    ref = reference_engine_nodes((shared_dir / REFERENCE).read_text())
    assert len(ref) == 18  # 9 DM + 9 ML
    declared = {p for p in tree.nodes if p.startswith(("engine.DM.", "engine.ML."))}
    assert declared == set(ref) | ADDED
    for path, (type_, default, low) in ref.items():
        node = tree.nodes[path]
        assert node.types in ((type_,), (type_, "NoneType")), path  # None where the doc gives it a meaning
        expected = {"TRUE": True, "FALSE": False, "None": None}.get(default, default)
        if isinstance(expected, str) and type_ in ("int", "float"):
            expected = float(expected)
        assert node.default == expected, path
        if path in DROPPED:
            assert node.lowlim is None and "not enforced" in node.doc, path
        else:
            assert node.lowlim == (None if low is None else float(low)), path
