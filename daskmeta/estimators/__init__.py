"""Meta-analytic estimators: ALE, MKDADensity and KDA (coordinate-based)."""

from daskmeta.estimators.ale import ALE
from daskmeta.estimators.mkda import KDA, MKDADensity

__all__ = ["ALE", "KDA", "MKDADensity"]
