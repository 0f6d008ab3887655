"""Exceptions with a message meant for the person running difframe.

The CLI maps :class:`UsageError` (and its subclasses) to exit status 2 and every
other :class:`DifframeError` to exit status 1, printing only the message.
"""


class DifframeError(Exception):
    """A failure with a message that names its culprit."""


class UsageError(DifframeError):
    """Bad command line, parameter file or parameter value (exit status 2)."""


class ParameterError(UsageError):
    """A parameter failed validation; the message names the dotted path."""


class PluginError(DifframeError):
    """A plugin could not be loaded or registered."""


class DataError(DifframeError):
    """Missing, corrupt or inconsistent input data (exit status 1)."""
