"""daskmeta: neuroimaging meta-analysis at whole-database scale, on Dask.

Every coordinate-based statistic is a reduction over the study axis of a modeled-activation
matrix; daskmeta builds those reductions as lazy Dask graphs (see ``DESIGN`` in the docs).
"""

# Where numba caches compiled code, set on import before any module decorates a function (a
# read-only install caches in a per-version directory instead of the package).
from daskmeta import _numba_cache  # isort: skip

# The package's dask.config defaults (daskmeta.yaml) first, before any module reads them.
from daskmeta import config  # isort: skip
from daskmeta import cluster, correct, estimators, io, simulate
from daskmeta._version import __version__
from daskmeta.collection import Collection
from daskmeta.conjunction import conjunction
from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning, DatasetError, ParseError
from daskmeta.imagestack import ImageStack
from daskmeta.macm import macm
from daskmeta.results import MetaResult
from daskmeta.space import Space, mni2tal, tal2mni

_numba_cache.restore()  # every compiled function of the package is decorated by now

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
