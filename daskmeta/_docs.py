"""Shared parameter docs, written once and filled into numpydoc docstrings (nilearn's way).

Decorate a class or function with :func:`fill_doc`; ``%(name)s`` in its docstring becomes the
text of :data:`DOCS` ``[name]`` (indented to match).
"""

from __future__ import annotations

__all__ = ["DOCS", "fill_doc"]

DOCS = {
    "mask": """mask : str, image or Space, optional
    Analysis mask (default: nilearn's MNI152 2 mm brain mask; see the README on NiMARE's
    mask).""",
    "mask_margin": """mask_margin : float
    Foci whose nearest voxel lies more than this many mm outside the mask are dropped with
    one warning (default 10; ``float("inf")`` keeps every focus).""",
    "chunk_size": """chunk_size : int, optional
    Experiments per block when MA rows are read from a store (default: the dask config
    ``daskmeta.chunk-size``, 64).""",
    "null_method": """null_method : {"approximate"}
    Null distribution of the voxel-wise p-values (the Monte Carlo null is
    :class:`~daskmeta.correct.FWECorrector`'s).""",
    "kernel_kwargs": """**kwargs
    Kernel parameters as ``kernel__<name>`` (NiMARE's convention), e.g. ``kernel__fwhm``.""",
    "select": """select : str or sequence of str, optional
    Analyse only these experiments: a label expression (see
    :meth:`Dataset.get_studies_by_label`) or a list of experiment ids. Experiments without
    foci are left out, as NiMARE does; an empty selection is an error.""",
    "label_threshold": """label_threshold : float
    Label weight threshold of a ``select`` expression (NiMARE's ``label_threshold``).""",
    "diagnostic_target": """target_image : str
    The map whose clusters are characterised (default
    ``z_desc-size_level-cluster_corr-FWE_method-montecarlo``).
voxel_thresh : float, optional
    NiMARE's older name of ``target_threshold``.
cluster_threshold : int, optional
    Smallest cluster, in voxels.
display_second_group : bool
    Of a pairwise result (MKDAChi2, ALESubtraction), also characterise the negative
    tail's clusters by the second group's experiments (default: only the positive
    tail's, by the first group's; a one-tailed target is always characterised by its
    tail's group).""",
}


def _indent(text: str, prefix: str) -> str:
    lines = text.splitlines()
    return "\n".join([lines[0]] + [prefix + line if line else line for line in lines[1:]])


def fill_doc(obj):
    """Fill ``%(name)s`` placeholders in ``obj.__doc__`` from :data:`DOCS`."""
    doc = obj.__doc__
    if not doc:
        return obj
    lines = doc.splitlines()
    out = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("%(") and stripped.endswith(")s"):
            key = stripped[2:-2]
            prefix = line[: len(line) - len(line.lstrip())]
            out.append(prefix + _indent(DOCS[key], prefix))
        else:
            out.append(line)
    obj.__doc__ = "\n".join(out)
    return obj
