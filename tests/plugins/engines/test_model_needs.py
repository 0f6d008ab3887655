"""difframe_model_needs: an engine says what it needs in a scan's model, the model builder provides it, and the
resolved parameters stay as the user wrote them (a third-party engine registered on a Run's plugin manager)."""

import numpy as np
import pytest

import difframe
from difframe import Run
from difframe.errors import PluginError
from difframe.manager import PluginManager
from difframe.ptycho.ptyr import read_ptyr
from difframe.types import EngineSpec, RecipeSpec

from ptycho_truth import simulate

KEY = "layer_counts"  # the third-party engine's stored terms: content/layer_counts/<scan>/seen


class LayersEngine:
    """A tiny third-party engine: it needs 3 object layers, and keeps (and resumes) how many runs it has seen."""

    seen: list = []

    def __init__(self, params, model):
        self.model = model

    def initialize(self):
        scan = self.model.scans[0]
        before = self.model.engine_terms.get(KEY, {}).get(scan.label)
        LayersEngine.seen.append((self.model.objects[scan.object_id].data.shape[0],
                                  None if before is None else int(before["seen"][0])))
        runs = 1 if before is None else int(before["seen"][0]) + 1
        self.model.engine_terms.setdefault(KEY, {})[scan.label] = {"seen": np.array([runs])}

    def iterate(self, n):
        return [{"deviance": 1.0}] * n

    def finalize(self):
        return {"engine": "Layers"}


class LayersPlugin:
    """Registers the engine and says what it needs: 3 object layers, and its terms from the file the scan's
    object resumes from, if that holds them."""

    def __init__(self, prep):
        self.prep = prep

    @difframe.hookimpl
    def difframe_engines(self):
        yield EngineSpec(name="Layers", summary="needs three object layers", factory=LayersEngine, parameters={})

    @difframe.hookimpl
    def difframe_recipes(self):
        yield RecipeSpec(name="truth", summary="simulated scan", prepare=lambda p, ctx: self.prep)

    @difframe.hookimpl
    def difframe_model_needs(self, run, scan):
        if not any(ep.name == "Layers" for ep in run.params.engines.values()):
            return None
        sample = run.params.scans[scan].sample
        needs = {"num_object_modes": 3}
        if sample.model == "recon":
            needs["engine_terms"] = {KEY: sample.recon.rfile}
        return needs


def test_a_third_party_engine_gets_its_model_and_the_parameters_stay_as_written(tmp_path):
    prep, probe, _ = simulate(photons=1e5)
    LayersEngine.seen = []
    params = {"run": "n", "io": {"paths": {"home": str(tmp_path)}, "autosave": {"active": False}},
              "plotclient": {"dump_interval": None},
              "scans": {"a": {"data": {"source": "truth"}, "illumination": {"model": np.abs(probe)}}},
              "engines": {"e": {"name": "Layers", "numiter": 1}}}
    run = Run(params, plugins=PluginManager(plugins=[LayersPlugin(prep)]))
    written = repr(run.params)
    first = run.run()["reconstruction"]
    assert repr(run.params) == written  # nothing rewrote the resolved tree
    stored = read_ptyr(first)
    assert stored.objects["a"]["data"].shape[0] == 3 and stored.params["scans"]["a"]["coherence"][
        "num_object_modes"] == 1

    recon = {"model": "recon", "recon": {"rfile": str(first)}}
    resumed = Run({**params, "run": "m", "scans": {"a": {"data": {"source": "truth"}, "illumination": recon,
                                                        "sample": recon}}},
                  plugins=PluginManager(plugins=[LayersPlugin(prep)]))
    written = repr(resumed.params)
    again = read_ptyr(resumed.run()["reconstruction"])
    assert repr(resumed.params) == written
    # the first run built 3 layers and had no stored terms; the resumed one loaded all 3 layers and its terms
    assert LayersEngine.seen == [(3, None), (3, 1)]
    assert again.objects["a"]["data"].shape[0] == 3


class Asks:
    def __init__(self, answer):
        self.answer = answer

    @difframe.hookimpl
    def difframe_model_needs(self, run, scan):
        return self.answer


def test_needs_are_merged_and_conflicts_or_bad_answers_name_the_plugins():
    def needs(*plugins):
        manager = PluginManager()
        for name, plugin in plugins:
            manager.add_plugin(plugin, name=name)
        return Run({"scans": {"a": {}}}, plugins=manager).model_needs("a")

    assert needs() == {}
    assert needs(("p", Asks({"num_object_modes": 2})), ("q", Asks({"num_object_modes": 2})),
                 ("r", Asks({"engine_terms": {"t": "x.ptyr"}})), ("s", Asks(None))) == {
        "num_object_modes": 2, "engine_terms": {"t": "x.ptyr"}}
    with pytest.raises(PluginError, match=r"plugins 'p' and 'q' need different num_object_modes .*\(2 and 3\)"):
        needs(("p", Asks({"num_object_modes": 2})), ("q", Asks({"num_object_modes": 3})))
    with pytest.raises(PluginError, match=r"need different engine_terms\.t"):
        needs(("p", Asks({"engine_terms": {"t": "x.ptyr"}})), ("q", Asks({"engine_terms": {"t": "y.ptyr"}})))
    for answer, why in (([2], "a list"), ({"layers": 2}, "unknown keys"), ({"num_object_modes": 0}, "int >= 1"),
                        ({"engine_terms": "x.ptyr"}, "key: .ptyr path")):
        with pytest.raises(PluginError, match=rf"plugin 'bad': difframe_model_needs for scan 'a' gave .*{why}"):
            needs(("bad", Asks(answer)))
