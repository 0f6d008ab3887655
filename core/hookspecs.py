"""The hooks a difframe plugin can implement.

There are two families.

Registration hooks take no argument and return (or ``yield``) registration
records from :mod:`difframe.types`; one plugin may register any number of
things of any kind.  They are called once when a run's plugin manager loads.

Lifecycle hooks are called while a :class:`difframe.Run` executes, so facility
software can watch a run (log to its own database, stream metrics) and steer it
(``run.request_stop()``) without subclassing anything.

A complete plugin module::

    import numpy as np
    from difframe import hookimpl
    from difframe.types import ScanPatternSpec

    def _line(p):
        return np.stack([np.zeros(p.n), np.arange(p.n) * p.step], axis=1)

    @hookimpl
    def difframe_scan_patterns():
        yield ScanPatternSpec(name="line", summary="points along x", generate=_line,
                              parameters={"n": (int, 5, "number of points"),
                                          "step": (float, 1e-6, "spacing [m]")})

    @hookimpl
    def difframe_iteration_finished(run, engine, iteration, metrics):
        if metrics.get("error", 0.0) < 1e-6:
            run.request_stop()

declared in the plugin's ``pyproject.toml`` as::

    [project.entry-points."difframe.plugins"]
    mypkg.line = "mypkg.line"
"""

from __future__ import annotations

import pluggy

PROJECT = "difframe"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class DifframeHookSpecs:
    """Namespace of the hook specifications (pluggy reads the method names)."""

    # -- registration ------------------------------------------------------

    @hookspec
    def difframe_engines(self):
        """Register reconstruction or fitting engines.

        Return or yield :class:`difframe.types.EngineSpec` records.  The engine's
        ``parameters`` are mounted at ``engine.<name>`` and merged, with
        ``engine.common``, into every ``engines.<label>`` whose ``name`` is this
        engine's.

        Example::

            @hookimpl
            def difframe_engines():
                yield EngineSpec(name="ePIE", summary="extended PIE",
                                 factory=make_epie, parameters={"beta": (float, 0.9, "step")})
        """

    @hookspec
    def difframe_recipes(self):
        """Register data recipes (:class:`difframe.types.RecipeSpec`).

        A recipe turns raw input into prepared frames; it is chosen per scan with
        ``scans.<label>.data.source = "<name>"``.  Its parameters are mounted at
        ``scan.data.recipe.<name>``.

        Example::

            @hookimpl
            def difframe_recipes():
                yield RecipeSpec(name="id16a", summary="ID16A HDF5 scans",
                                 prepare=load_id16a, parameters={"scan_number": (int, None, "scan")})
        """

    @hookspec
    def difframe_detector_readers(self):
        """Register detector frame readers (:class:`difframe.types.DetectorReaderSpec`).

        The reader whose ``sniff`` accepts a file's first bytes is used; when
        none does, the file's extension decides.

        Example::

            @hookimpl
            def difframe_detector_readers():
                yield DetectorReaderSpec(name="tiff", summary="TIFF frames", extensions=(".tif",),
                                         sniff=lambda head: head[:4] in (b"II*\\0", b"MM\\0*"),
                                         read=read_tiff)
        """

    @hookspec
    def difframe_detector_templates(self):
        """Register detector templates (:class:`difframe.types.DetectorTemplateSpec`).

        Templates are used by simulations (``scan.data.simulation.detector``).

        Example::

            @hookimpl
            def difframe_detector_templates():
                yield DetectorTemplateSpec(name="mythen", summary="...", shape=(1, 1280),
                                           pixel_size=(8e-3, 50e-6))
        """

    @hookspec
    def difframe_illumination_models(self):
        """Register illumination (probe) models (:class:`difframe.types.IlluminationModelSpec`).

        Chosen with ``scan.illumination.model = "<name>"``; parameters mounted at
        ``scan.illumination.<name>``.

        Example::

            @hookimpl
            def difframe_illumination_models():
                yield IlluminationModelSpec(name="gauss", summary="Gaussian beam", build=gauss,
                                            parameters={"fwhm": (float, 1e-6, "FWHM [m]")})
        """

    @hookspec
    def difframe_sample_models(self):
        """Register sample (object) models (:class:`difframe.types.SampleModelSpec`).

        Chosen with ``scan.sample.model = "<name>"``; parameters mounted at
        ``scan.sample.<name>``.

        Example::

            @hookimpl
            def difframe_sample_models():
                yield SampleModelSpec(name="siemens", summary="Siemens star", build=star)
        """

    @hookspec
    def difframe_scan_patterns(self):
        """Register scan patterns (:class:`difframe.types.ScanPatternSpec`).

        Chosen with ``scan.xy.type = "<name>"``; parameters mounted at
        ``scan.xy.<name>``.  ``generate(p)`` returns (N, 2) positions [m], (y, x).

        Example: see the module docstring.
        """

    @hookspec
    def difframe_minimisers(self):
        """Register minimisers (:class:`difframe.types.MinimiserSpec`).

        Chosen by name by the engines that minimise (``tds_fit``); parameters
        mounted at ``minimiser.<name>``.

        Example::

            @hookimpl
            def difframe_minimisers():
                yield MinimiserSpec(name="nelder-mead", summary="simplex", minimise=simplex)
        """

    # -- what engines need from the model ------------------------------------

    @hookspec
    def difframe_model_needs(self, run, scan):
        """What this plugin's engines need in scan ``scan``'s model that the parameters, as the user wrote them,
        leave open.

        The ptychography flow asks once per scan (``scan`` is its label) before it builds the model, and
        :meth:`difframe.Run.model_needs` merges the answers.  Return None (nothing) or a dict with any of:

        - ``num_object_modes``: the layers the scan's object storage is built (or loaded from a ``.ptyr``) with,
          in place of ``scans.<scan>.coherence.num_object_modes``;
        - ``engine_terms``: ``{key: path}``, a ``.ptyr`` whose ``content/<key>/<scan>`` the model's
          ``engine_terms[key][scan]`` start from (what an engine keeps beside object and probe, resumed).

        Why a hook: an engine whose state resumes from a file needs the model built to suit it (e3PIE's slices
        are the object's layers; OPR's per-frame probes are stored terms).  Written into ``run.params`` at
        ``difframe_run_started`` that would rewrite the user's tree behind their back (and the result files
        would record parameters nobody gave); asked here, the tree stays as written and the choice is logged.
        Two plugins asking for different values of one thing: a PluginError naming both.

        Example::

            @hookimpl
            def difframe_model_needs(run, scan):
                if any(ep.name == "MyMultislice" for ep in run.params.engines.values()):
                    return {"num_object_modes": 3}
        """

    # -- lifecycle ---------------------------------------------------------

    @hookspec
    def difframe_run_started(self, run):
        """A run has validated its parameters and is about to prepare data.

        ``run.params`` is the resolved tree, read-only: what an engine needs the model built with goes
        through :meth:`difframe_model_needs`, not into the tree.

        Example::

            @hookimpl
            def difframe_run_started(run):
                logbook.open(run.params.run)
        """

    @hookspec
    def difframe_engine_started(self, run, engine):
        """Engine ``engine`` (its ``engines.<label>`` label) is initialised.

        Example::

            @hookimpl
            def difframe_engine_started(run, engine):
                print("starting", engine, run.params.engines[engine].name)
        """

    @hookspec
    def difframe_iteration_finished(self, run, engine, iteration, metrics):
        """An iteration finished; ``metrics`` is a dict of plain numbers.

        Called after each block of ``numiter_contiguous`` iterations for every
        iteration of the block.  Call ``run.request_stop()`` to end the engine
        after the current block.

        Example::

            @hookimpl
            def difframe_iteration_finished(run, engine, iteration, metrics):
                dashboard.push(engine, iteration, metrics)
        """

    @hookspec
    def difframe_engine_finished(self, run, engine, summary):
        """Engine ``engine`` finished; ``summary`` is what its ``finalize`` gave.

        Example::

            @hookimpl
            def difframe_engine_finished(run, engine, summary):
                archive(summary)
        """

    @hookspec
    def difframe_run_finished(self, run, results):
        """The run finished; ``results`` maps output names to file paths.

        Example::

            @hookimpl
            def difframe_run_finished(run, results):
                notify(results.get("reconstruction"))
        """

    @hookspec
    def difframe_run_failed(self, run, error):
        """The run stopped on ``error`` (an exception); nothing was overwritten.

        Example::

            @hookimpl
            def difframe_run_failed(run, error):
                pager.alert(str(error))
        """
