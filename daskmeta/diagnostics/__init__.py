"""Diagnostics of meta-analyses: funnel and forest plots of image-based data in an ROI."""

from daskmeta.diagnostics.plots import plot_forest, plot_funnel, roi_effects

__all__ = ["plot_forest", "plot_funnel", "roi_effects"]
