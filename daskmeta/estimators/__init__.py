"""Meta-analytic estimators.

Coordinate-based: :class:`ALE`, :class:`MKDADensity` and :class:`KDA`; contrasts of two
groups: :class:`MKDAChi2`, :class:`ALESubtraction`. Base classes for new
estimators (see ``docs/extending.md``): :class:`Estimator` (the contract every estimator
follows), :class:`CBMAEstimator` (a kernel, one selection) and
:class:`PairwiseCBMAEstimator` (a kernel, two selections).
"""

from daskmeta.estimators.ale import ALE
from daskmeta.estimators.base import Estimator
from daskmeta.estimators.cbma import CBMAEstimator
from daskmeta.estimators.chi2 import MKDAChi2
from daskmeta.estimators.mkda import KDA, MKDADensity
from daskmeta.estimators.pairwise import PairwiseCBMAEstimator
from daskmeta.estimators.subtraction import ALESubtraction

__all__ = ["ALE", "ALESubtraction", "CBMAEstimator", "Estimator", "KDA", "MKDAChi2", "MKDADensity", "PairwiseCBMAEstimator"]
