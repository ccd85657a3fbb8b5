"""daskmeta: neuroimaging meta-analysis at whole-database scale, on Dask.

Every coordinate-based statistic is a reduction over the study axis of a modeled-activation
matrix; daskmeta builds those reductions as lazy Dask graphs (see ``DESIGN`` in the docs).

The names below are imported when first used (``daskmeta.Dataset``, ``from daskmeta import
ALE``-style imports of them, ``daskmeta.io``): ``import daskmeta`` itself loads only the
package's dask.config defaults, so a command starts at once and pays only for what it uses.
"""

# The package's dask.config defaults (daskmeta.yaml) first, before any module reads them.
from daskmeta import config  # isort: skip
from daskmeta._version import __version__
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning, DatasetError, ParseError

# Functions named as their modules, bound now: a later import of the module (``import
# daskmeta.macm``) would otherwise leave the module under the function's name.
from daskmeta.conjunction import conjunction  # isort: skip
from daskmeta.macm import macm  # isort: skip

#: Public names and the modules that define them, imported on first use.
_LAZY = {
    "Collection": "daskmeta.collection",
    "Dataset": "daskmeta.dataset",
    "ImageStack": "daskmeta.imagestack",
    "MetaResult": "daskmeta.results",
    "Space": "daskmeta.space",
    "mni2tal": "daskmeta.space",
    "tal2mni": "daskmeta.space",
}
#: Subpackages and modules reachable as attributes (``daskmeta.io.read``).
_SUBMODULES = ("cluster", "correct", "estimators", "io", "simulate")

__all__ = [
    "__version__",
    "Collection",
    "cluster",
    "config",
    "conjunction",
    "correct",
    "estimators",
    "io",
    "macm",
    "simulate",
    "DaskmetaError",
    "DaskmetaWarning",
    "Dataset",
    "DatasetError",
    "ImageStack",
    "MetaResult",
    "ParseError",
    "Space",
    "mni2tal",
    "tal2mni",
]


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"daskmeta.{name}")
    else:
        raise AttributeError(f"module 'daskmeta' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
