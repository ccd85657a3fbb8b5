"""Monte Carlo nulls: seeded batches on Dask, into which estimators plug their null.

A run is a :class:`NullModel` (how one null data set is drawn and its statistic computed:
an estimator's ``_null_model()``, e.g. :class:`FociNull` with :class:`UniformFoci` or
:class:`BaseRateFoci`), a :class:`Summary` (what each iteration returns:
:class:`MaxStatistic`, :class:`ClusterMaxima`, :class:`VoxelExceedances`, or your own) and
:func:`run_montecarlo` (seeded batches as Dask tasks, early stopping, progress; identical on
any number of workers). :class:`daskmeta.correct.FWECorrector` is its main user.
"""

from daskmeta.montecarlo.models import (
    BaseRateFoci,
    ClusterMaxima,
    FociNull,
    MaxStatistic,
    NullModel,
    Summary,
    UniformFoci,
    VoxelExceedances,
)
from daskmeta.montecarlo.runner import (
    DEFAULT_BATCH_SIZE,
    MonteCarloNulls,
    batch_bounds,
    batch_seed,
    default_batch_size,
    null_to_p,
    run_batch,
    run_montecarlo,
    threshold_relative_se,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "BaseRateFoci",
    "ClusterMaxima",
    "FociNull",
    "MaxStatistic",
    "MonteCarloNulls",
    "NullModel",
    "Summary",
    "UniformFoci",
    "VoxelExceedances",
    "batch_bounds",
    "batch_seed",
    "default_batch_size",
    "null_to_p",
    "run_batch",
    "run_montecarlo",
    "threshold_relative_se",
]
