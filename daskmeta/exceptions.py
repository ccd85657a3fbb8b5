"""Errors and warnings raised by daskmeta.

Every problem with a user's input is raised as a :class:`DaskmetaError` (or a subclass), with a
message naming what was received, what is allowed and, where there is one, the file and line.
"""

from __future__ import annotations

__all__ = [
    "DaskmetaError",
    "DaskmetaWarning",
    "DatasetError",
    "NotFittedError",
    "ParseError",
]


class DaskmetaError(ValueError):
    """Base class of daskmeta's errors about user input or state."""


class DatasetError(DaskmetaError):
    """A Dataset is inconsistent or cannot serve the analysis asked of it."""


class ParseError(DaskmetaError):
    """A file could not be read; the message names the file and, where known, the line.

    Parameters
    ----------
    message : str
        What is wrong.
    path : str or None
        The file being read.
    line : int or None
        1-based line number of the offending line.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}, line {line}"
            where += ": "
        super().__init__(where + message)


class NotFittedError(DaskmetaError, AttributeError):
    """An estimator or corrector was used before ``fit``."""


class DaskmetaWarning(UserWarning):
    """A documented, recoverable problem with the input (e.g. foci dropped outside the mask)."""
