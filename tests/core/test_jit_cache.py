"""difframe.jit_cache: a cached kernel is recompiled when a numba function it calls from another file changes."""

import subprocess
import sys
import textwrap

RUN = textwrap.dedent("""
    import sys
    from pathlib import Path
    from difframe import jit_cache
    here = Path(sys.argv[1]).resolve()
    sys.path[:0] = [str(here / "core"), str(here / "plugins")]
    if sys.argv[2] == "stamped":
        jit_cache.roots = lambda: (here / "core", here / "plugins")  # scratch trees stand for difframe's
        jit_cache.install()
    import caller
    print(caller.call(), min(1, sum(caller.call.stats.cache_hits.values())))
""")


def _write(path, value):
    path.write_text(f"import numba\n\n\n@numba.njit(cache=True)\ndef value():\n    return {value}\n")


def _run(tmp_path, mode):
    out = subprocess.run([sys.executable, "-c", RUN, str(tmp_path), mode], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _scratch(tmp_path):
    """A plugin's kernel (plugins/caller.py) calling a core function (core/callee.py)."""
    for tree in ("core", "plugins"):
        (tmp_path / tree).mkdir()
    (tmp_path / "plugins" / "caller.py").write_text(
        "import numba\nfrom callee import value\n\n\n@numba.njit(cache=True)\ndef call():\n    return value() + 0\n")
    _write(tmp_path / "core" / "callee.py", 1)


def test_a_kernel_calling_a_changed_function_of_another_file_is_recompiled(tmp_path):
    _scratch(tmp_path)
    assert _run(tmp_path, "stamped") == ["1", "0"]  # compiled
    assert _run(tmp_path, "stamped") == ["1", "1"]  # from the disk cache
    _write(tmp_path / "core" / "callee.py", 2)
    assert _run(tmp_path, "stamped") == ["2", "0"]  # recompiled with the new callee
    assert _run(tmp_path, "stamped") == ["2", "1"]


def test_numbas_own_rule_keeps_the_stale_kernel(tmp_path):
    """The hazard the module guards against (numba's documented limitation): if numba ever tracks what a kernel
    calls, this fails and difframe.jit_cache can go."""
    _scratch(tmp_path)
    assert _run(tmp_path, "plain") == ["1", "0"]
    _write(tmp_path / "core" / "callee.py", 2)
    assert _run(tmp_path, "plain") == ["1", "1"]


def test_difframes_kernels_are_stamped_with_the_cores_numba_sources():
    from difframe import jit_cache
    from difframe.plugins.engines import ml_kernels
    from difframe.ptycho import kernels

    locator = kernels.pods._cache._impl.locator
    assert isinstance(locator, jit_cache.LOCATORS)
    own, sources = locator.get_source_stamp()
    assert sources == jit_cache.sources_stamp(*jit_cache.roots())
    assert ml_kernels.ml_line_sums._cache._impl.locator.get_source_stamp()[1] == sources


def test_the_stamp_follows_the_cores_numba_files_and_not_the_plugins(tmp_path):
    """Installed layout: the plugins' tree inside the core's."""
    from difframe import jit_cache

    core, plugins = tmp_path / "difframe", tmp_path / "difframe" / "plugins"
    plugins.mkdir(parents=True)
    _write(core / "helpers.py", 1)
    _write(plugins / "engine_kernels.py", 1)
    (core / "plain.py").write_text("x = 1\n")

    def stamp():
        jit_cache.sources_stamp.cache_clear()
        return jit_cache.sources_stamp(core, plugins)

    first = stamp()
    _write(plugins / "engine_kernels.py", 2)  # numba's own stamp of that file covers it
    (core / "plain.py").write_text("x = 2\n")  # no numba: no kernel can call it
    assert stamp() == first
    _write(core / "helpers.py", 2)
    assert stamp() != first
