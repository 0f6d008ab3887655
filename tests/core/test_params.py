"""The parameter tree against the reference contract, and the rules of resolution."""

import json
import re

import pytest

from difframe.errors import ParameterError, UsageError
from difframe.manager import PluginManager
from difframe.params import ParamTree, load_source, merge_sources, parse_override
from difframe.run import Run

REFERENCE = "reference/000_45fb112b10c2865c.txt"


def parse_reference(text):
    """path -> (types, default text, lowlim text, uplim text, help) from the reST reference."""
    nodes = {}
    for block in re.split(r"^\.\. py:data:: ", text, flags=re.M)[1:]:
        head, _, body = block.partition("\n")
        path, types = re.match(r"\.(\S+?)\((.*)\)\s*$", head).groups()
        help_ = re.search(r"\*\(\d+\)\*[ \t]*(.*)", body).group(1).strip()
        default = re.search(r"\*default\* = ``(.*)``", body).group(1)
        limits = re.search(r"\(([<>][^)]*)\)\s*$", default)
        low = up = None
        if limits:
            default = default[: limits.start()].strip()
            for part in limits.group(1).split(","):
                part = part.strip()
                low = part[1:] if part.startswith(">") else low
                up = part[1:] if part.startswith("<") else up
        nodes[path] = ([t.strip() for t in types.split(",")], default, low, up, help_)
    return nodes


@pytest.fixture(scope="module")
def tree():
    return ParamTree.build(PluginManager())


@pytest.fixture(scope="module")
def reference(shared_dir):
    return parse_reference((shared_dir / REFERENCE).read_text())


def _same_default(ours, text):
    if text in ("None", ""):
        return ours is None
    if text in ("TRUE", "FALSE"):
        return ours is (text == "TRUE")
    try:
        return float(ours) == float(text)
    except (TypeError, ValueError):
        return str(ours) == text


def test_every_reference_node_is_in_the_tree(tree, reference):
    missing = [p for p in reference if p not in tree.nodes]
    assert not missing, f"reference nodes missing from the tree: {missing}"
    assert len(reference) == 170


def test_types_defaults_limits_match_or_the_doc_says_why(tree, reference):
    """A deviation from the reference is allowed only where the node's doc explains it."""
    undocumented = []
    for path, (types, default, low, up, help_) in reference.items():
        if path in ("engine.DM", "engine.ML") or path.startswith(("engine.DM.", "engine.ML.")):
            if path not in tree.nodes:
                continue  # the engine plugins own these; tested with the engines
        node = tree.nodes[path]
        same = (
            set(types) <= set(node.types)
            and (_same_default(node.default, default) or (node.types[0] in ("Param", "ext", "scan", "engine")))
            and (low is None or (node.lowlim is not None and float(node.lowlim) == float(low)))
            and (up is None or float(node.uplim) == float(up))
            and (low is not None or node.lowlim is None)
        )
        extra_types = set(node.types) - set(types)
        if not same or extra_types:
            if "reference" not in node.doc:
                undocumented.append(path)
    assert not undocumented, f"deviations from the reference without a word in the doc: {undocumented}"


def test_help_texts_follow_the_reference(tree, reference):
    """Leaves keep the reference's help; a plugin's mount node (engine.DM, scan.xy.raster) shows its summary."""
    mounts = {path for path, node in tree.nodes.items() if node.owner != "core" and node.types == ("Param",)}
    for path, (*_, help_) in reference.items():
        if help_ and path in tree.nodes and path not in ("dry_run",) and path not in mounts:
            assert tree.nodes[path].help == help_, path


def test_garbled_reference_values_are_repaired(tree):
    assert tree.nodes["io.paths.data"].default == "analysis/%(run)s/%(run)s.ptyd"
    assert tree.nodes["interaction.port_range"].default == "5571:5671"
    for path in ("scan.xy.type", "scan.illumination.aperture.form", "scan.sample.process.ref_index"):
        assert tree.nodes[path].lowlim is None and "not enforced" in tree.nodes[path].doc


def test_json_dump_shape(tree):
    dumped = json.loads(json.dumps(tree.to_json()))
    assert "scans.scan_%d" in dumped and "engines.engine_%d" in dumped
    node = dumped["scan.xy.raster.nx"]
    assert node == {"type": ["int"], "default": 10, "lowlim": 0, "uplim": None, "choices": None,
                    "help": "Number of steps in x", "doc": ""}
    assert dumped["scan.sample.process.ref_index"]["default"] == "(0.5+0j)"
    assert set(dumped["scan.xy.type"]["choices"]) >= {"raster", "round", "round_roi", "spiral", "spiral_roi", "custom"}


def test_scans_inherit_from_scan_and_keep_their_own(tree):
    p = tree.resolve({"scan": {"geometry": {"energy": 8.0}, "xy": {"type": "raster"}},
                      "scans": {"a": {}, "b": {"geometry": {"energy": 9.0}, "xy": {"raster": {"nx": 3}}}}})
    assert p.scans.a.geometry.energy == 8.0 and p.scans.b.geometry.energy == 9.0
    assert p.scans.b.xy.type == "raster" and p.scans.b.xy.raster.nx == 3 and p.scans.a.xy.raster.nx == 10
    assert p.scans.a.geometry.distance == 7.19  # default
    assert p.scan.geometry.energy == 8.0


class _EngineModule:
    """A tiny engine plugin, to test engines.<label> inheritance without the real engines."""

    from difframe import hookimpl as _hookimpl
    from difframe.types import EngineSpec as _EngineSpec

    @staticmethod
    @_hookimpl
    def difframe_engines():
        yield _EngineModule._EngineSpec(
            name="TOY", summary="toy engine", factory=dict,
            parameters={"beta": (float, 0.5, "step"), "mode": __import__("difframe.types").types.Parameter(
                type="str", default="a", choices=("a", "b"), help="mode")})


@pytest.fixture(scope="module")
def toy_tree():
    return ParamTree.build(PluginManager(plugins=[_EngineModule]))


def test_engines_inherit_common_and_their_own_defaults(toy_tree):
    p = toy_tree.resolve({"engine": {"common": {"numiter": 50}, "TOY": {"beta": 0.7}},
                          "engines": {"e2": {"name": "toy", "numiter": 7}, "e1": {"name": "TOY", "mode": "b"}}})
    assert list(p.engines) == ["e2", "e1"]  # the order of the file
    common = {"numiter_contiguous": 1, "probe_support": 0.7, "clip_object": None, "fit_background": True,
              "background_update_start": 5, "orthogonal_modes": True}
    assert {k: v for k, v in p.engines.e2.items() if k != "position_refinement"} == {
        "name": "TOY", "numiter": 7, "beta": 0.7, "mode": "a", **common}
    assert p.engines.e2.position_refinement.active is False  # engine.common's subtree reaches every engine
    assert p.engines.e1.numiter == 50 and p.engines.e1.mode == "b"


def test_engine_errors_name_the_path(toy_tree):
    with pytest.raises(ParameterError, match=r"engines.e1.name is missing"):
        toy_tree.resolve({"engines": {"e1": {"numiter": 3}}})
    with pytest.raises(ParameterError, match=r"engines.e1.name = 'TYO'.*did you mean 'TOY'"):
        toy_tree.resolve({"engines": {"e1": {"name": "TYO"}}})
    with pytest.raises(ParameterError, match=r"engines.e1.betta is not a parameter of engine 'TOY'; did you mean 'beta'"):
        toy_tree.resolve({"engines": {"e1": {"name": "TOY", "betta": 1.0}}})
    with pytest.raises(ParameterError, match=r"engines.e1.mode = 'c': expected one of 'a', 'b'"):
        toy_tree.resolve({"engines": {"e1": {"name": "TOY", "mode": "c"}}})


@pytest.mark.parametrize("values, message", [
    ({"verbose_level": 7}, r"verbose_level = 7: expected int \(>= 0, <= 3\)"),
    ({"verbose_level": 1.5}, r"verbose_level = 1.5: expected int"),
    ({"data_type": "half"}, r"data_type = 'half': expected one of 'single', 'double'"),
    ({"scan": {"geometry": {"energy": -1.0}}}, r"scan.geometry.energy = -1.0: expected float \(>= 0.0\)"),
    ({"scan": {"geometry": {"enrgy": 1.0}}}, r"scan.geometry.enrgy is not a known parameter; did you mean 'energy'"),
    ({"scans": {"s1": {"xy": {"type": "spiarl"}}}}, r"scans.s1.xy.type = 'spiarl'.*did you mean 'spiral'"),
    ({"io": {"autosave": {"active": "yes"}}}, r"io.autosave.active = 'yes': expected bool"),
    ({"scan": {"coherence": {"num_probe_modes": None}}}, r"num_probe_modes = None: expected int"),
    ({"scans": {"s1": 3}}, r"scans.s1 = 3: expected a table"),
])
def test_validation_errors_name_path_value_and_expectation(tree, values, message):
    with pytest.raises(ParameterError, match=message):
        tree.resolve(values)


def test_conversions(tree):
    p = tree.resolve({"scan": {"data": {"shape": [64, 32], "center": [1, 2]},
                               "sample": {"process": {"ref_index": "1e-5+2e-7j"}},
                               "geometry": {"distance": 2}},
                      "interaction": {"primary_port": 6000}})
    assert p.scan.data.shape == (64, 32) and p.scan.geometry.distance == 2.0
    assert isinstance(p.scan.geometry.distance, float)
    assert p.scan.sample.process.ref_index == complex(1e-5, 2e-7)
    assert p.interaction.primary_port == 6000 and p.interaction.primary_address == "tcp://127.0.0.2"
    assert tree.resolve({}).interaction is None  # no server unless asked for


def test_sources_toml_json_yaml_mapping_and_overrides(tmp_path):
    (tmp_path / "a.toml").write_text('[scan.geometry]\nenergy = 7.0\ndistance = 3.0\n')
    (tmp_path / "b.json").write_text('{"scan": {"geometry": {"energy": 8.0}}, "data_type": "double"}')
    (tmp_path / "c.yaml").write_text("scan:\n  geometry:\n    psize: 7.5e-5\n")
    merged = merge_sources([tmp_path / "a.toml", tmp_path / "b.json", tmp_path / "c.yaml",
                            {"verbose_level": 2}, parse_override("scan.geometry.energy=9.5")])
    run = Run(merged)
    g = run.params.scan.geometry
    assert (g.energy, g.distance, g.psize) == (9.5, 3.0, 7.5e-5)
    assert run.params.data_type == "double" and run.params.verbose_level == 2


def test_override_values_are_toml_literals():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("a.b=3.0") == {"a": {"b": 3.0}}
    assert parse_override('a.b="x y"') == {"a": {"b": "x y"}}
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    assert parse_override("a.b=true") == {"a": {"b": True}}
    assert parse_override("a.b=raster") == {"a": {"b": "raster"}}  # bare word: a string
    with pytest.raises(UsageError, match="expected dotted.path=value"):
        parse_override("novalue")


def test_bad_files_are_named(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_source(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[scan\n")
    with pytest.raises(UsageError, match="bad.toml.*could not be parsed"):
        load_source(tmp_path / "bad.toml")
    (tmp_path / "x.ini").write_text("")
    with pytest.raises(UsageError, match="unknown format"):
        load_source(tmp_path / "x.ini")


def test_plugin_names_aliases_any_case_are_accepted_and_typos_named(tree):
    p = tree.resolve({"scans": {"a": {"xy": {"type": "Raster"}, "illumination": {"model": "flower"},
                                      "data": {"source": "ptyd"}}}})
    assert p.scans.a.xy.type == "Raster" and p.scans.a.illumination.model == "flower"
    assert "flower" in tree.nodes["scan.illumination.model"].choices  # aliases are listed as choices
    with pytest.raises(ParameterError, match=r"scans.a.illumination.model = 'flowr'.*did you mean 'flower'"):
        tree.resolve({"scans": {"a": {"illumination": {"model": "flowr"}}}})


def test_simulation_overrides_keep_only_what_is_given(tree):
    p = tree.resolve({"scan": {"data": {"simulation": {"illumination": {"aperture": {"size": 2e-6}},
                                                       "xy": {"type": "spiral", "spiral": {"dr": 1e-6}}}}},
                      "scans": {"a": {}}})
    sim = p.scans.a.data.simulation
    assert sim.illumination == {"aperture": {"size": 2e-6}} and sim.sample is None
    assert sim.xy == {"type": "spiral", "spiral": {"dr": 1e-6}}
    with pytest.raises(ParameterError, match=r"simulation.illumination.aperture.sise.*did you mean 'size'"):
        tree.resolve({"scan": {"data": {"simulation": {"illumination": {"aperture": {"sise": 1}}}}}})
    with pytest.raises(ParameterError, match=r"simulation.xy.spiral.dr = -1.0: expected float"):
        tree.resolve({"scan": {"data": {"simulation": {"xy": {"spiral": {"dr": -1.0}}}}}})


@pytest.mark.parametrize("written, documented", [
    ("engine.DM", "engine.DM"), ("engines.dm", "engine.DM"), ("engine.dm", "engine.DM"), ("DM", "engine.DM"),
    ("engines.e1.numiter_contiguous", "engine.common.numiter_contiguous"), ("scans.a.xy.spiral", "scan.xy.spiral"),
    ("spiral", "scan.xy.spiral"), ("ref_index", "scan.sample.process.ref_index"), ("", ""),
])
def test_params_finds_a_node_however_it_is_written(tree, written, documented):
    assert tree.find(written) == documented


def test_params_lookup_that_is_not_one_node_names_the_candidates(tree):
    with pytest.raises(UsageError, match=r"'alpha' names \d+ parameters: .*engine\.DM\.alpha"):
        tree.find("alpha")
    with pytest.raises(UsageError, match=r"no parameter 'engine\.DN'; did you mean 'engine\.DM'"):
        tree.find("engine.DN")


def test_params_command_shows_engine_dm_for_engines_dm(capsys):
    from difframe.cli import main

    assert main(["params", "engines.dm"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(".engine.DM (Param)") and ".engine.DM.alpha" in out and "engine.ML" not in out
    assert "'engines.dm' is documented as 'engine.DM'" in err


def test_docs_do_not_call_implemented_choices_unimplemented(tree):
    """The reference's notes on ptypy's gaps ('only gaussian', 'merge [not implemented]') are not difframe's."""
    ml = tree.nodes["engine.ML.type"]
    assert set(ml.choices) == {"gaussian", "poisson", "euclid"} and "only 'gaussian'" not in ml.help + ml.doc
    save = tree.nodes["scan.data.save"]
    assert "merge" in save.choices and "[not implemented]" not in save.doc
