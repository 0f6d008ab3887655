"""The plugin manager's loading rules, with real entry points from .dist-info folders."""

import sys
import textwrap

import pytest

from difframe.errors import PluginError, UsageError
from difframe.manager import PluginManager

GOOD = """
from difframe import hookimpl
from difframe.types import ScanPatternSpec

@hookimpl
def difframe_scan_patterns():
    return [ScanPatternSpec(name="{name}", summary="test pattern", generate=lambda p: [[0.0, 0.0]])]
"""


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """Make distributions with entry points visible on sys.path, as pip would install them."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def make(dist: str, version: str, modules: dict[str, str]) -> None:
        info = tmp_path / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        eps = "\n".join(f"{dist}.{mod} = {mod}" for mod in modules)
        (info / "entry_points.txt").write_text(f"[difframe.plugins]\n{eps}\n")
        for mod, source in modules.items():
            (tmp_path / f"{mod}.py").write_text(textwrap.dedent(source))
            made.append(mod)

    yield make
    for mod in made:
        sys.modules.pop(mod, None)


def test_builtins_load_and_register_patterns():
    manager = PluginManager()
    names = set(manager.specs("scan_pattern"))
    assert {"raster", "round", "round_roi", "spiral", "spiral_roi", "custom"} <= names
    assert manager.provider("scan_pattern", "raster").distribution == "difframe"
    assert all(r.status == "active" for r in manager.records if r.distribution == "difframe")


def test_plugin_raising_on_import_is_listed_failed_and_others_survive(fake_site):
    fake_site("brokenpkg", "0.3", {"broken_mod": "raise RuntimeError('missing detector SDK')\n"})
    fake_site("goodpkg", "1.0", {"good_mod": GOOD.format(name="zigzag")})
    manager = PluginManager()
    broken = next(r for r in manager.records if r.plugin == "brokenpkg.broken_mod")
    assert broken.status == "failed"
    assert "missing detector SDK" in broken.error and broken.distribution == "brokenpkg"
    assert "zigzag" in manager.specs("scan_pattern")


def test_strict_mode_makes_a_broken_plugin_fatal(fake_site):
    fake_site("brokenpkg", "0.3", {"broken_mod": "import no_such_module_here\n"})
    with pytest.raises(PluginError, match="brokenpkg.broken_mod"):
        PluginManager(strict=True)


def test_two_plugins_with_one_name_are_refused_naming_both(fake_site):
    fake_site("alpha", "1.0", {"alpha_mod": GOOD.format(name="zigzag")})
    fake_site("beta", "2.0", {"beta_mod": GOOD.format(name="zigzag")})
    manager = PluginManager()
    second = next(r for r in manager.records if r.plugin == "beta.beta_mod")
    assert second.status == "failed"
    assert "alpha.alpha_mod" in second.error and "alpha 1.0" in second.error
    assert manager.provider("scan_pattern", "zigzag").plugin == "alpha.alpha_mod"


def test_a_third_party_cannot_take_a_builtin_name(fake_site):
    fake_site("evil", "1.0", {"evil_mod": GOOD.format(name="raster")})
    manager = PluginManager()
    assert manager.provider("scan_pattern", "raster").distribution == "difframe"
    assert next(r for r in manager.records if r.plugin == "evil.evil_mod").status == "failed"


def test_disabled_plugins_are_blocked(fake_site, monkeypatch):
    fake_site("goodpkg", "1.0", {"good_mod": GOOD.format(name="zigzag")})
    monkeypatch.setenv("DIFFRAME_DISABLED_PLUGINS", "goodpkg.good_mod, patterns.spiral")
    manager = PluginManager()
    status = {r.plugin: r.status for r in manager.records}
    assert status["goodpkg.good_mod"] == "blocked" and status["patterns.spiral"] == "blocked"
    assert "zigzag" not in manager.specs("scan_pattern") and "spiral" not in manager.specs("scan_pattern")


def test_disable_autoload_keeps_builtins_only(fake_site, monkeypatch):
    fake_site("goodpkg", "1.0", {"good_mod": GOOD.format(name="zigzag")})
    monkeypatch.setenv("DIFFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")
    manager = PluginManager()
    assert "zigzag" not in manager.specs("scan_pattern") and "raster" in manager.specs("scan_pattern")
    assert next(r for r in manager.records if r.plugin == "goodpkg.good_mod").status == "blocked"


def test_trace_logs_loading_and_hook_calls(monkeypatch, caplog):
    monkeypatch.setenv("DIFFRAME_TRACE_PLUGINS", "1")
    with caplog.at_level("DEBUG", logger="difframe.plugins"):
        manager = PluginManager()
        manager.hook.difframe_run_started(run=None)
    text = caplog.text
    assert "loaded plugin patterns.raster" in text and "difframe_run_started" in text


def test_hook_giving_the_wrong_record_type_fails_the_plugin(fake_site):
    fake_site("wrongpkg", "1.0", {"wrong_mod": """
        from difframe import hookimpl
        from difframe.types import EngineSpec

        @hookimpl
        def difframe_scan_patterns():
            yield EngineSpec(name="x", summary="not a pattern", factory=dict)
        """})
    manager = PluginManager()
    record = next(r for r in manager.records if r.plugin == "wrongpkg.wrong_mod")
    assert record.status == "failed" and "expected ScanPatternSpec" in record.error


def test_unknown_name_suggests_the_closest(fake_site):
    manager = PluginManager()
    with pytest.raises(UsageError, match="did you mean 'spiral'"):
        manager.get("scan_pattern", "spirl")
    assert manager.get("scan_pattern", "RASTER").name == "raster"  # names are case-insensitive


def test_managers_are_independent():
    one = PluginManager(disabled={"patterns.round"})
    two = PluginManager()
    assert "round" not in one.specs("scan_pattern") and "round" in two.specs("scan_pattern")


class EveryKind:
    """One plugin object registering one record of every kind, with a parameter each."""

    from difframe import hookimpl
    from difframe import types as t

    P = {"gain": (float, 1.0, "a parameter")}

    @hookimpl
    def difframe_engines(self):
        return self.t.EngineSpec(name="toy_engine", summary="s", factory=dict, parameters=self.P)

    @hookimpl
    def difframe_recipes(self):
        yield self.t.RecipeSpec(name="toy_recipe", summary="s", prepare=dict, parameters=self.P)

    @hookimpl
    def difframe_detector_readers(self):
        yield self.t.DetectorReaderSpec(name="toy_reader", summary="s", extensions=(".toy",),
                                        sniff=lambda head: head.startswith(b"TOY"), read=open)

    @hookimpl
    def difframe_detector_templates(self):
        yield self.t.DetectorTemplateSpec(name="toy_detector", summary="s", shape=(10, 20), pixel_size=(1e-4, 1e-4))

    @hookimpl
    def difframe_illumination_models(self):
        yield self.t.IlluminationModelSpec(name="toy_probe", summary="s", build=dict, parameters=self.P)

    @hookimpl
    def difframe_sample_models(self):
        yield self.t.SampleModelSpec(name="toy_object", summary="s", build=dict, parameters=self.P)

    @hookimpl
    def difframe_scan_patterns(self):
        yield self.t.ScanPatternSpec(name="toy_pattern", summary="s", generate=dict, parameters=self.P)

    @hookimpl
    def difframe_minimisers(self):
        yield self.t.MinimiserSpec(name="toy_minimiser", summary="s", minimise=dict, parameters=self.P)


def test_every_registration_hook_registers_and_mounts_parameters():
    from difframe.params import ParamTree
    from difframe.types import MOUNT_POINTS

    manager = PluginManager(load=False, plugins=[EveryKind()])
    tree = ParamTree.build(manager)
    for kind, mount in MOUNT_POINTS.items():
        (name,) = [n for n in manager.specs(kind) if n.startswith("toy_")]
        assert manager.provider(kind, name).plugin == "EveryKind"
        if kind != "detector_template" and kind != "detector_reader":
            node = tree.nodes[mount.format(name=name) + ".gain"]
            assert node.default == 1.0 and node.types == ("float",) and node.owner == "EveryKind"
    assert "toy_pattern" in tree.nodes["scan.xy.type"].choices
    assert "toy_recipe" in tree.nodes["scan.data.source"].choices
