"""Recipe ``tds_harvest``: rotation frames -> points around selected Bragg spots (family "tds").

``prepare(params, context)`` takes the run's ``tds`` subtree (tds2el names) and a
context with ``plugins`` (the run's plugin manager), ``comm`` (an mpi4py
communicator or None) and optionally ``progress`` (a bar advanced per frame); it writes ``save_to_file`` on rank 0 and returns the
:class:`difframe.tds.harvest.Harvest` there (None on the other ranks).
"""

from difframe import hookimpl
from difframe.types import RecipeSpec


def prepare(params, context=None):
    from difframe.tds.workflow import harvest_step

    context = context or {}
    return harvest_step(params, context.get("plugins"), context.get("comm"), context.get("progress"))


@hookimpl
def difframe_recipes():
    yield RecipeSpec(name="tds_harvest", summary="TDS points near Bragg spots from rotation frames (MPI over frames)",
                     family="tds", prepare=prepare)
