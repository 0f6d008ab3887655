"""Registration records that plugins yield from their ``difframe_*`` hooks.

Every record is a frozen, keyword-only dataclass: a plugin describes itself with
data, the core decides what to do with it.  The ``parameters`` field is the
plugin's parameter schema; it is mounted into the parameter tree at a place that
depends on the kind (see :data:`MOUNT_POINTS`) and documented and validated like
the built-in nodes.

Schema form
-----------
``parameters`` maps a (possibly dotted) key to either

* the shorthand tuple ``(type, default, help)``, where ``type`` is a Python
  type, a type name as the reference writes it (``"int"``, ``"float"``,
  ``"str"``, ``"bool"``, ``"tuple"``, ``"list"``, ``"Param"``, ``"file"``, ...)
  or a tuple of those; or
* a :class:`Parameter`, which adds limits, choices and a longer doc.

Example::

    parameters = {
        "n": (int, 5, "number of points"),
        "step": Parameter(type="float", default=1e-6, lowlim=0.0,
                          help="spacing [m]", doc="Distance between points."),
    }
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = [
    "Parameter",
    "ScanPatternSpec",
    "EngineSpec",
    "RecipeSpec",
    "DetectorReaderSpec",
    "DetectorTemplateSpec",
    "IlluminationModelSpec",
    "SampleModelSpec",
    "MinimiserSpec",
    "SPEC_KINDS",
    "MOUNT_POINTS",
]


@dataclass(frozen=True, kw_only=True)
class Parameter:
    """One node of a parameter schema, in its rich form.

    ``type`` is a type name, a Python type or a tuple of them.  ``lowlim`` and
    ``uplim`` are inclusive bounds for numbers; ``choices`` restricts the value
    to a set (``None`` is allowed in addition whenever the default is ``None``).
    """

    type: Any
    default: Any = None
    help: str = ""
    doc: str = ""
    lowlim: float | None = None
    uplim: float | None = None
    choices: tuple | None = None


@dataclass(frozen=True, kw_only=True)
class _Spec:
    name: str
    summary: str
    aliases: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ScanPatternSpec(_Spec):
    """A scan pattern: ``generate(p)`` returns (N, 2) positions in metres, (y, x).

    ``p`` is the validated subtree ``scan.xy.<name>`` with attribute access.
    """

    generate: Callable[[Any], Any]


@dataclass(frozen=True, kw_only=True)
class EngineSpec(_Spec):
    """A reconstruction engine.

    ``factory(params, context)`` returns an object with ``initialize()``,
    ``iterate(n) -> list[dict]`` (one metrics dict per iteration) and
    ``finalize() -> dict``.  ``params`` is the resolved ``engines.<label>``
    subtree; ``context`` is what the run hands engines of this family (the
    ptychography model, or the TDS harvest).
    """

    factory: Callable[..., Any]
    family: str = "ptycho"


@dataclass(frozen=True, kw_only=True)
class RecipeSpec(_Spec):
    """A data recipe: ``prepare(params, context)`` returns prepared data.

    ``params`` is the resolved ``scans.<label>`` subtree (or the ``tds`` subtree
    for TDS recipes).
    """

    prepare: Callable[..., Any]
    family: str = "ptycho"


@dataclass(frozen=True, kw_only=True)
class DetectorReaderSpec(_Spec):
    """A reader of detector frame files.

    ``extensions`` are lower-case suffixes without compression suffix (``".cbf"``);
    ``sniff(head: bytes) -> bool`` recognises the format from the first bytes of
    the (decompressed) file; ``read(path) -> Frame`` returns data and metadata.
    """

    extensions: tuple[str, ...]
    sniff: Callable[[bytes], bool]
    read: Callable[[Any], Any]


@dataclass(frozen=True, kw_only=True)
class DetectorTemplateSpec(_Spec):
    """A detector geometry and response template (no code, only data).

    ``shape`` is (rows, cols); ``pixel_size`` (y, x) in metres; ``module_shape``
    and ``gap`` (rows, cols) describe the dead bands between modules (zero gap for
    a monolithic sensor); ``saturation`` in counts; ``dark_counts`` mean per pixel
    and frame; ``dtype`` of the frames it writes.
    """

    shape: tuple[int, int]
    pixel_size: tuple[float, float]
    module_shape: tuple[int, int] | None = None
    gap: tuple[int, int] = (0, 0)
    saturation: float | None = None
    dark_counts: float = 0.0
    dtype: str = "int32"


@dataclass(frozen=True, kw_only=True)
class IlluminationModelSpec(_Spec):
    """An illumination (probe) model: ``build(params, context)`` -> complex array
    (modes, H, W).  ``params`` is the scan's ``illumination`` subtree."""

    build: Callable[..., Any]


@dataclass(frozen=True, kw_only=True)
class SampleModelSpec(_Spec):
    """A sample (object) model: ``build(params, context)`` -> complex array
    (modes, H, W).  ``params`` is the scan's ``sample`` subtree."""

    build: Callable[..., Any]


@dataclass(frozen=True, kw_only=True)
class MinimiserSpec(_Spec):
    """A minimiser: ``minimise(problem, params) -> result``.

    ``problem`` offers ``x0``, ``bounds`` (lower, upper arrays), ``residuals(x)``
    and ``jacobian(x)``; the result has ``x``, ``cost``, ``converged`` and
    ``message``.
    """

    minimise: Callable[..., Any]


#: kind name -> (hook name, registration dataclass)
SPEC_KINDS: dict[str, tuple[str, type]] = {
    "engine": ("difframe_engines", EngineSpec),
    "recipe": ("difframe_recipes", RecipeSpec),
    "detector_reader": ("difframe_detector_readers", DetectorReaderSpec),
    "detector_template": ("difframe_detector_templates", DetectorTemplateSpec),
    "illumination_model": ("difframe_illumination_models", IlluminationModelSpec),
    "sample_model": ("difframe_sample_models", SampleModelSpec),
    "scan_pattern": ("difframe_scan_patterns", ScanPatternSpec),
    "minimiser": ("difframe_minimisers", MinimiserSpec),
}

#: where each kind's parameter schema is mounted in the tree ({name} = spec name)
MOUNT_POINTS: dict[str, str] = {
    "engine": "engine.{name}",
    "recipe": "scan.data.recipe.{name}",
    "detector_reader": "detector.reader.{name}",
    "detector_template": "detector.template.{name}",
    "illumination_model": "scan.illumination.{name}",
    "sample_model": "scan.sample.{name}",
    "scan_pattern": "scan.xy.{name}",
    "minimiser": "minimiser.{name}",
}
