"""None where a node's doc gives it a meaning: every input spelling, what the engines make of it, and refusals."""

import json
import re

import numpy as np
import pytest

from difframe.cli import main
from difframe.errors import ParameterError
from difframe.manager import PluginManager
from difframe.params import ParamTree, merge_sources, parse_override
from difframe.ptycho import model as pm

# A source that sets all three away from None first, so a later None is seen to win.
BASE = {"plotclient": {"dump_interval": 5}, "engines": {"e1": {"name": "DM", "probe_support": 0.5,
                                                               "obj_smooth_std": 3}}}


@pytest.fixture(scope="module")
def tree():
    return ParamTree.build(PluginManager())


def _spelling(kind, tmp_path):
    """The source that writes None for probe_support, obj_smooth_std and dump_interval in one spelling."""
    if kind == "toml":
        path = tmp_path / "none.toml"
        path.write_text('[plotclient]\ndump_interval = "None"\n'
                        '[engines.e1]\nprobe_support = "None"\nobj_smooth_std = "None"\n')
        return [path]
    if kind == "json":
        path = tmp_path / "none.json"
        path.write_text('{"plotclient": {"dump_interval": null}, '
                        '"engines": {"e1": {"probe_support": null, "obj_smooth_std": null}}}')
        return [path]
    if kind in ("yaml-null", "yaml-tilde", "yaml-empty"):
        word = {"yaml-null": "null", "yaml-tilde": "~", "yaml-empty": ""}[kind]
        path = tmp_path / "none.yaml"
        path.write_text(f"plotclient:\n  dump_interval: {word}\n"
                        f"engines:\n  e1:\n    probe_support: {word}\n    obj_smooth_std: {word}\n")
        return [path]
    if kind == "-p":
        return [parse_override(t) for t in ("plotclient.dump_interval=None", "engines.e1.probe_support=None",
                                            "engines.e1.obj_smooth_std=None")]
    if kind == "mapping":
        return [{"plotclient": {"dump_interval": None},
                 "engines": {"e1": {"probe_support": None, "obj_smooth_std": None}}}]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["toml", "json", "yaml-null", "yaml-tilde", "yaml-empty", "-p", "mapping"])
def test_each_spelling_switches_support_smoothing_and_dumps_off(tree, tmp_path, kind):
    p = tree.resolve(merge_sources([BASE, *_spelling(kind, tmp_path)]))
    e1 = p.engines.e1
    assert e1.probe_support is None and e1.obj_smooth_std is None and p.plotclient.dump_interval is None
    assert pm.probe_support((16, 16), e1.probe_support, np.float32) is None


def test_the_base_alone_keeps_them_on(tree):
    """The spellings above are what turn the features off: without them the base values stand."""
    p = tree.resolve(BASE)
    assert (p.engines.e1.probe_support, p.engines.e1.obj_smooth_std, p.plotclient.dump_interval) == (0.5, 3, 5)


def test_dm_without_support_leaves_the_probe_corners_free(tree):
    """With probe_support = None the DM probe update is not cut to a disc; with 0.5 the corners are zero."""
    from difframe.plugins.engines import dm
    from difframe.ptycho.data import PreparedData

    rng = np.random.default_rng(0)
    shape = (16, 16)
    pos = np.stack(np.meshgrid(np.arange(3), np.arange(3), indexing="ij"), -1).reshape(-1, 2) * 4e-7
    prep = PreparedData(label="s", data=rng.poisson(50.0, (9, *shape)).astype(np.float32),
                        mask=np.ones(shape, bool), positions=pos, energy_kev=6.2, distance_m=1.0,
                        psize_m=(1e-4, 1e-4), center=(8, 8))
    corners = {}
    for support in (0.5, "None"):
        model = pm.build_model({"s": prep}, {"s": (None, 1.0, None, 1.0)},
                               init_probe=lambda label, shape_, psize_: np.ones((1, *shape_), complex),
                               init_object=lambda label, shape_, psize_, origin: np.ones((1, *shape_), complex))
        params = tree.resolve({"engines": {"e1": {"name": "DM", "probe_support": support,
                                                  "probe_update_start": 0}}}).engines.e1
        engine = dm.factory(params, model)
        engine.initialize()
        engine.iterate(1)
        corners[support] = np.abs(model.probes["s"].data[0, 0, 0])
    assert corners[0.5] == 0 and corners["None"] > 0


def test_none_text_is_none_only_where_no_string_none_is_meant(tree):
    p = tree.resolve({"scan": {"xy": {"type": "None"}, "illumination": {"aperture": {"form": "None"}},
                               "geometry": {"energy": "None", "lam": 1e-10}}, "run": "None"})
    assert p.scan.xy.type is None and p.scan.illumination.aperture.form is None and p.scan.geometry.energy is None
    assert p.run == "None"  # free text: a run may be called "None"
    assert parse_override("run=None") == {"run": None} and parse_override('run="None"') == {"run": "None"}


@pytest.mark.parametrize("values, message", [
    ({"scan": {"coherence": {"num_probe_modes": None}}},
     "scan.coherence.num_probe_modes = None: expected int (>= 0); None is not allowed here"),
    ({"verbose_level": "None"}, "verbose_level = 'None': expected int (>= 0, <= 3), got str"),
    ({"data_type": "None"}, "data_type = 'None': expected one of 'single', 'double'"),
    ({"engines": {"e1": {"name": "DM", "probe_support": False}}},
     "engines.e1.probe_support = False: expected float (>= 0.0) or None, got bool"),
    ({"engines": {"e1": {"name": "DM", "alpha": None}}},
     "engines.e1.alpha = None: expected int (>= 0); None is not allowed here"),
])
def test_nodes_without_a_none_meaning_refuse_it_in_one_line(tree, values, message):
    with pytest.raises(ParameterError) as exc:
        tree.resolve(values)
    assert str(exc.value) == message


# "None" in these docs is about another node ("Only used if formula is not None").
NOT_ABOUT_ITSELF = {"scan.sample.process.density", "scan.data.simulation.sample.process.density"}


def test_every_node_whose_doc_gives_none_a_meaning_accepts_it(tree):
    speaks = {path for path, node in tree.nodes.items() if re.search(r"\bNone\b", node.help + " " + node.doc)}
    assert {"engine.common.probe_support", "engine.DM.obj_smooth_std", "plotclient.dump_interval"} <= speaks
    refusing = sorted(path for path in speaks - NOT_ABOUT_ITSELF if not tree.nodes[path].allows_none)
    assert not refusing, f"these docs give None a meaning but the nodes refuse it: {refusing}"


def test_params_command_shows_none_and_its_spellings(capsys):
    assert main(["params", "engine.common.probe_support"]) == 0
    out = capsys.readouterr().out
    assert ".engine.common.probe_support (float, NoneType)" in out and "None switches the support off" in out
    assert 'None allowed: null (JSON, YAML), None (-p), "None" (TOML)' in out
    assert main(["params", "run"]) == 0
    assert '"None" is text here' in capsys.readouterr().out


def test_cli_override_none_reaches_the_resolved_engine(capsys, tmp_path):
    params = tmp_path / "e.toml"
    params.write_text('[engines.e1]\nname = "DM"\nprobe_support = 0.4\n')
    code = main(["run", str(params), "--dry-run", "--json", "-p", "engines.e1.probe_support=None"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["params"]["engines"]["e1"]["probe_support"] is None


@pytest.mark.parametrize("written, shown", [("engines.dm", "engine.DM"), ("engine.ml", "engine.ML"),
                                             ("engines.e1.probe_support", "engine.common.probe_support"),
                                             ("scans.a.xy", "scan.xy")])
def test_params_shows_the_template_of_a_labelled_copy(capsys, written, shown):
    assert main(["params", written]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f".{shown} (") and f"{written!r} is documented as {shown!r}" in err


@pytest.mark.parametrize("wrong, message", [("scan.xx", "no parameter 'scan.xx'; did you mean 'scan.xy'?"),
                                            ("engines.e1.alpha", "'engines.e1.alpha' names ")])
def test_params_lookup_that_finds_no_single_node_says_so(capsys, wrong, message):
    assert main(["params", wrong]) == 2
    assert message in capsys.readouterr().err


def _raw(energy_kev=8.0):
    """Frames whose source says 8 keV, 2 m and 75 um pixels."""
    from difframe.ptycho.prepare import RawScan

    frames = np.zeros((4, 20, 30), np.float32)
    frames[:, 5, 7] = 10.0
    return RawScan(frames=frames, positions=np.arange(8.0).reshape(4, 2) * 1e-6, energy_kev=energy_kev,
                   distance_m=2.0, psize_m=(75e-6, 75e-6), center=(5, 7))


def _scan(tree, **geometry):
    return tree.resolve({"scans": {"s1": {"geometry": geometry}}}).scans.s1


CTX = {"label": "s1", "positions": None, "plugins": None, "params": None, "data_type": "single", "dry_run": False}


def test_geometry_conflicts_are_logged_only_for_values_someone_gave(tree, caplog):
    from types import SimpleNamespace

    from difframe.ptycho.prepare import prepare

    with caplog.at_level("INFO", logger="difframe.ptycho.prepare"):
        out = prepare(_raw(), _scan(tree), SimpleNamespace(**CTX), save=False)
    assert (out.energy_kev, out.distance_m) == (8.0, 2.0)  # the source's, over scan.geometry's defaults
    assert not [r for r in caplog.records if "differs" in r.getMessage()]
    caplog.clear()
    with caplog.at_level("INFO", logger="difframe.ptycho.prepare"):
        prepare(_raw(), _scan(tree, energy=9.0), SimpleNamespace(**CTX), save=False)
    said = [r.getMessage() for r in caplog.records if "differs" in r.getMessage()]
    assert len(said) == 1 and "energy differs between data source (8.0) and parameters (9.0)" in said[0]


def test_energy_none_without_a_wavelength_or_a_source_value_names_both_nodes(tree):
    from types import SimpleNamespace

    from difframe.ptycho.prepare import prepare

    with pytest.raises(ParameterError, match=r"^scans\.s1\.geometry\.energy \(and \.lam\) is None and the data "
                                             r"source does not give the energy: set it$"):
        prepare(_raw(energy_kev=None), _scan(tree, energy=None), SimpleNamespace(**CTX), save=False)
    out = prepare(_raw(energy_kev=None), _scan(tree, energy=None, lam=1e-10), SimpleNamespace(**CTX), save=False)
    assert out.energy_kev == pytest.approx(12.398419843320026)  # hc / 1 Angstrom


def test_sample_projection_honours_none_for_thickness_and_ref_index():
    """thickness None with a formula: the image's absolute values are the thickness [m]; ref_index None: the
    image is the projected phase itself.  Truth: Henke's Si at 8 keV (delta 7.6e-6, beta 1.7e-7)."""
    from difframe.ptycho.models import ModelContext, project

    ctx = ModelContext(shape=(16, 16), psize=(1e-7, 1e-7), energy_kev=8.0, distance_m=1.0)
    image = np.zeros((1, 16, 16))
    image[0, 4:12, 4:12] = 2e-6  # 2 um of silicon in the middle, none around
    silicon = project(image, {"formula": "Si", "density": 2.33, "thickness": None, "smoothing": 0}, ctx)[0]
    k = 2 * np.pi / ctx.wavelength_m
    assert np.angle(silicon[8, 8]) == pytest.approx(-k * 7.6e-6 * 2e-6, rel=0.03)
    assert -np.log(abs(silicon[8, 8])) == pytest.approx(k * 1.7e-7 * 2e-6, rel=0.1)
    assert silicon[0, 0] == pytest.approx(1.0)
    phases = np.zeros((1, 16, 16))
    phases[0, 4:12, 4:12] = 0.7
    phases[0, 6, 6] = 1.9  # radians: kept as they are, not rescaled to a ref_index
    phase = project(phases, {"ref_index": None, "thickness": 1e-6, "smoothing": 0}, ctx)[0]
    np.testing.assert_allclose(np.angle(phase), phases[0], atol=1e-12)
    np.testing.assert_allclose(abs(phase), 1.0)
    scaled = project(phases, {"ref_index": 0.5, "thickness": 1e-6, "smoothing": 0}, ctx)[0]
    assert np.angle(scaled[6, 6]) == pytest.approx(0.5) and np.angle(scaled[8, 8]) == pytest.approx(0.5 * 0.7 / 1.9)
