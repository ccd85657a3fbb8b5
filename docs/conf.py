"""Sphinx configuration of daskmeta's documentation site (``make docs``).

Sphinx with numpydoc (docstrings) and sphinx-gallery (runnable examples), as nilearn and
NiMARE build theirs; Markdown pages (the README's "Differences from NiMARE" list and
``extending.md``) are read with MyST, so the README stays their single source.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import daskmeta  # noqa: E402

project = "daskmeta"
author = "the daskmeta developers"
copyright = "daskmeta developers"
version = release = daskmeta.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.md5", "auto_examples/*.json"]
master_doc = "index"
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # the README section starts below its page's title

# numpydoc: no autosummary tables of every attribute and method (autodoc lists them).
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "none"
# No network at build time: no intersphinx inventories are fetched.
intersphinx_mapping: dict = {}

# sphinx-gallery: the examples are run at every build (small inputs; a few seconds each).
# DASKMETA_DOCS_EXAMPLES (a regular expression of example file names) limits which run.
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": os.environ.get("DASKMETA_DOCS_EXAMPLES", r"/plot_"),
    "ignore_pattern": r"__init__\.py",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "plot_gallery": "True",
    "abort_on_example_error": True,
    "within_subsection_order": "FileNameSortKey",
    "image_scrapers": ("matplotlib",),
}

html_theme = "alabaster"
html_title = f"daskmeta {release}"
html_theme_options = {
    "description": "Neuroimaging meta-analysis at whole-database scale, on Dask",
    "fixed_sidebar": True,
}
html_static_path: list = []
