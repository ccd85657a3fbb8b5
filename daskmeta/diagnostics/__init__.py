"""Diagnostics of meta-analytic results (NiMARE's ``nimare.diagnostics``).

- :class:`Jackknife`: each experiment's contribution to each cluster, all leave-one-out
  folds in one pass over the experiments' MA rows;
- :class:`FocusCounter`: each experiment's foci in each cluster;
- :class:`ResampledStability`: how often each voxel survives thresholding over resampled
  subsets of the experiments;
- :func:`plot_funnel`, :func:`plot_forest` (and :func:`roi_effects`, their numbers):
  per-study effect sizes of image-based data in an ROI, a publication-bias check.

Each ``transform(result)`` returns a copy of the result with NiMARE's tables (in
``result.tables``, written by :meth:`~daskmeta.MetaResult.save_tables`) and maps added.
"""

from daskmeta.diagnostics.focuscounter import FocusCounter
from daskmeta.diagnostics.jackknife import Jackknife
from daskmeta.diagnostics.plots import plot_forest, plot_funnel, roi_effects
from daskmeta.diagnostics.stability import ResampledStability

__all__ = ["DIAGNOSTICS", "FocusCounter", "Jackknife", "ResampledStability", "plot_forest",
           "plot_funnel", "roi_effects"]

#: The diagnostics the workflows and the command line run by name (NiMARE's names).
DIAGNOSTICS = {"jackknife": Jackknife, "focuscounter": FocusCounter}
