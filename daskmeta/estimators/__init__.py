"""Meta-analytic estimators.

Coordinate-based: :class:`ALE`, :class:`MKDADensity`, :class:`KDA` and :class:`SCALE`;
contrasts of two groups: :class:`MKDAChi2`, :class:`ALESubtraction` and
:class:`BalancedALESubtraction`. Image-based (NiMARE's
IBMA estimators, blockwise over an image stack): :class:`Stouffers`, :class:`Fishers`,
:class:`WeightedLeastSquares`, :class:`DerSimonianLaird`, :class:`Hedges`,
:class:`FixedEffectsHedges`, :class:`SampleSizeBasedLikelihood`,
:class:`VarianceBasedLikelihood` and :class:`PermutedOLS`. Base classes for new
estimators (see ``docs/extending.md``): :class:`Estimator` (the contract every estimator
follows), :class:`CBMAEstimator` (a kernel, one selection), :class:`IBMAEstimator`
(images, no kernel) and
:class:`PairwiseCBMAEstimator` (a kernel, two selections).
"""

from daskmeta.estimators.ale import ALE
from daskmeta.estimators.balanced import BalancedALESubtraction
from daskmeta.estimators.base import Estimator
from daskmeta.estimators.cbma import CBMAEstimator
from daskmeta.estimators.chi2 import MKDAChi2
from daskmeta.estimators.ibma import (
    DerSimonianLaird,
    Fishers,
    FixedEffectsHedges,
    Hedges,
    IBMAEstimator,
    PermutedOLS,
    SampleSizeBasedLikelihood,
    Stouffers,
    VarianceBasedLikelihood,
    WeightedLeastSquares,
)
from daskmeta.estimators.mkda import KDA, MKDADensity
from daskmeta.estimators.pairwise import PairwiseCBMAEstimator
from daskmeta.estimators.scale import SCALE
from daskmeta.estimators.subtraction import ALESubtraction

__all__ = ["ALE", "ALESubtraction", "BalancedALESubtraction", "CBMAEstimator",
           "DerSimonianLaird", "Estimator", "Fishers", "FixedEffectsHedges", "Hedges",
           "IBMAEstimator", "KDA", "MKDAChi2", "MKDADensity", "PairwiseCBMAEstimator",
           "PermutedOLS", "SCALE", "SampleSizeBasedLikelihood", "Stouffers",
           "VarianceBasedLikelihood", "WeightedLeastSquares"]
