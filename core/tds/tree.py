"""The ``tds`` subtree of the parameter tree: a tds2el run written as difframe parameters."""

from difframe.types import Parameter as P

NODES = {
    "tds": P(
        type=("Param", "NoneType"),
        default=None,
        help="Thermal diffuse scattering: harvest and elastic-constant fit",
        doc="When given, `difframe run` harvests rotation frames around Bragg spots and fits the elastic "
        "constants, as tds2el did from input.par and conf_file.",
    ),
}
