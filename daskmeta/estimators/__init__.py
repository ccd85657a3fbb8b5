"""Meta-analytic estimators.

Coordinate-based: :class:`ALE`, :class:`MKDADensity`, :class:`KDA` and :class:`SCALE`. Base classes for new
estimators (see ``docs/extending.md``): :class:`Estimator` (the contract every estimator
follows), :class:`CBMAEstimator` (a kernel, one selection) and
:class:`PairwiseCBMAEstimator` (a kernel, two selections).
"""

from daskmeta.estimators.ale import ALE
from daskmeta.estimators.balanced import BalancedALESubtraction
from daskmeta.estimators.base import Estimator
from daskmeta.estimators.cbma import CBMAEstimator
from daskmeta.estimators.mkda import KDA, MKDADensity
from daskmeta.estimators.pairwise import PairwiseCBMAEstimator
from daskmeta.estimators.scale import SCALE

__all__ = ["ALE", "BalancedALESubtraction", "CBMAEstimator", "Estimator", "KDA", "MKDADensity", "PairwiseCBMAEstimator",
           "SCALE"]
