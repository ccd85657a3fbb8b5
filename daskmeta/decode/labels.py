"""Labels for decoding: which labels a decoder uses, and the study x label matrices it reads.

A decoder's labels are columns of a study x label weight matrix (a Dataset's ``labels``: the
Neurosynth LDA50 topic weights, the NeuroQuery term counts, ... or any sparse matrix a user
supplies with :func:`with_labels`). A label *holds* for a study where its weight is at least
``frequency_threshold`` (NiMARE's rule), and only studies with foci count (NiMARE's decoders
drop the others).
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import sparse

from daskmeta.exceptions import DaskmetaError, DatasetError

__all__ = ["LabelSelection", "select_labels", "tfidf", "with_labels"]


class LabelSelection:
    """The labels a decoder uses and the studies each holds for.

    Attributes
    ----------
    names : list of str
        Label names, in the decoder's order.
    weights : scipy.sparse.csr_matrix
        ``(n_labels, n_experiments)`` 0/1: which experiments (with foci) each label holds for.
    n_studies : (n_labels,) int64 ndarray
        Studies each label holds for (the row sums of ``weights``).
    rows : (n,) int64 ndarray
        The experiments with foci (the studies the decoder analyses).
    """

    def __init__(self, names, weights, n_studies, rows):
        self.names = list(names)
        self.weights = weights
        self.n_studies = np.asarray(n_studies, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)

    @property
    def n_total(self) -> int:
        """Number of studies analysed (those with foci)."""
        return int(len(self.rows))


def _label_matrix(dataset, label_matrix, label_names):
    if label_matrix is None:
        if label_names is not None:
            raise DaskmetaError("label_names given without label_matrix")
        return dataset.labels, list(dataset.label_names)
    matrix = sparse.csc_matrix(label_matrix)
    if matrix.shape[0] != dataset.n_experiments:
        raise DaskmetaError(f"label_matrix has {matrix.shape[0]} rows; the data have "
                            f"{dataset.n_experiments} experiments (one row each, in order)")
    names = [str(n) for n in (label_names if label_names is not None else [])]
    if len(names) != matrix.shape[1]:
        raise DaskmetaError(f"label_names has {len(names)} names for the {matrix.shape[1]} "
                            "columns of label_matrix")
    if len(set(names)) != len(names):
        raise DaskmetaError("label_names must be unique")
    return matrix, names


def _resolve_names(requested, names: list[str]) -> list[int]:
    """Column positions of a label request: None (all), a vocabulary name (every label
    ``VOCAB__*``), or label names (with or without a unique vocabulary prefix)."""
    if requested is None:
        return list(range(len(names)))
    if isinstance(requested, str):
        vocab = requested[:-2] if requested.endswith("__") else requested
        cols = [i for i, n in enumerate(names) if n.startswith(vocab + "__")]
        if cols:
            return cols
        if requested in names:
            return [names.index(requested)]
        vocabs = sorted({n.split("__", 1)[0] for n in names if "__" in n})
        raise DaskmetaError(f"labels={requested!r} is neither a vocabulary ({', '.join(vocabs) or 'none'}) "
                            "nor a label of the data")
    position = {n: i for i, n in enumerate(names)}
    short: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        if "__" in n:
            short.setdefault(n.split("__", 1)[1], []).append(i)
    cols = []
    for label in requested:
        label = str(label)
        if label in position:
            cols.append(position[label])
        elif len(short.get(label, ())) == 1:
            cols.append(short[label][0])
        else:
            why = "is ambiguous" if short.get(label) else "is not a label of the data"
            raise DaskmetaError(f"label {label!r} {why} ({len(names)} labels available)")
    if len(set(cols)) != len(cols):
        raise DaskmetaError("labels lists a label twice")
    return cols


def select_labels(dataset, foci_mask, labels=None, frequency_threshold: float = 0.001,
                  min_studies=1, label_matrix=None, label_names=None,
                  require_unselected: bool = True) -> LabelSelection:
    """The labels a decoder uses, and the experiments each holds for.

    Parameters
    ----------
    dataset : Dataset
    foci_mask : bool array
        Experiments with foci; the others are left out (NiMARE's decoders drop them).
    labels : None, str or sequence of str
        None: every label; a vocabulary name (``"LDA50"``: every ``LDA50__*`` label); or
        label names (the vocabulary prefix may be left out where unambiguous).
    frequency_threshold : float
        A label holds for a study whose weight is at least this.
    min_studies : int
        Labels holding for fewer studies are left out (1: NiMARE's rule, labels of no study).
    label_matrix, label_names : sparse matrix and list of str, optional
        A study x label matrix (rows in the dataset's experiment order) to use instead of
        the dataset's labels.
    require_unselected : bool
        Leave out labels that hold for every study (no unselected group: NiMARE's rule for
        a pairwise estimator).

    Raises
    ------
    DaskmetaError
        For an unknown label or vocabulary, a bad threshold, or no label left.
    """
    if not (isinstance(frequency_threshold, numbers.Real) and np.isfinite(frequency_threshold)):
        raise DaskmetaError(f"frequency_threshold must be a finite number; got "
                            f"{frequency_threshold!r}")
    if not (isinstance(min_studies, numbers.Integral) and not isinstance(min_studies, bool)
            and min_studies >= 1):
        raise DaskmetaError(f"min_studies must be an integer >= 1; got {min_studies!r}")
    matrix, names = _label_matrix(dataset, label_matrix, label_names)
    cols = _resolve_names(labels, names)
    rows = np.flatnonzero(np.asarray(foci_mask, dtype=bool))
    if len(rows) == 0:
        raise DatasetError("no experiment has foci")
    sub = sparse.csc_matrix(matrix)[:, cols] if cols else sparse.csc_matrix((matrix.shape[0], 0))
    if frequency_threshold <= 0:
        raise DaskmetaError(f"frequency_threshold must be > 0 (a label holds where its "
                            f"weight is at least the threshold); got {frequency_threshold!r}")
    held = sparse.csr_matrix(sub.tocsr()[rows] >= frequency_threshold, dtype=np.float64)
    n_studies = np.asarray(held.sum(axis=0)).ravel().astype(np.int64)
    keep = n_studies >= min_studies
    if require_unselected:
        keep &= n_studies < len(rows)
    if not keep.any():
        raise DaskmetaError(
            f"no label is left to decode: of {len(cols)} labels none holds for at least "
            f"{min_studies} of the {len(rows)} studies with foci"
            + (" and leaves some unselected" if require_unselected else "")
            + f" (frequency_threshold {frequency_threshold:g})")
    kept = np.flatnonzero(keep)
    coo = held[:, kept].T.tocoo()
    weights = sparse.csr_matrix((coo.data, (coo.row, rows[coo.col])),
                                shape=(len(kept), dataset.n_experiments))
    return LabelSelection([names[cols[k]] for k in kept], weights, n_studies[kept], rows)


def tfidf(counts, smooth_idf: bool = True, norm: str | None = "l2") -> sparse.csr_matrix:
    """tf-idf weights from a study x term count matrix (scikit-learn's
    ``TfidfTransformer`` defaults: ``idf = ln((1 + n) / (1 + df)) + 1``, rows scaled to unit
    l2 norm).

    Parameters
    ----------
    counts : sparse or dense (n_studies, n_terms) matrix of non-negative counts
    smooth_idf : bool
        Add one to the study counts (as if one extra study held every term once).
    norm : {"l2", "l1", None}
        Row normalization.

    Returns
    -------
    scipy.sparse.csr_matrix
    """
    counts = sparse.csr_matrix(counts, dtype=np.float64)
    if counts.nnz and counts.data.min() < 0:
        raise DaskmetaError("tfidf needs non-negative counts")
    if norm not in ("l2", "l1", None):
        raise DaskmetaError(f"norm must be 'l2', 'l1' or None; got {norm!r}")
    n = counts.shape[0] + int(smooth_idf)
    df = np.bincount(counts.indices[counts.data > 0], minlength=counts.shape[1]) + int(smooth_idf)
    with np.errstate(divide="ignore"):
        idf = np.log(n / df) + 1.0
    idf[~np.isfinite(idf)] = 0.0
    out = counts @ sparse.diags(idf)
    out = sparse.csr_matrix(out)
    if norm is not None:
        sq = out.multiply(out) if norm == "l2" else abs(out)
        scale = np.asarray(sq.sum(axis=1)).ravel()
        scale = np.sqrt(scale) if norm == "l2" else scale
        scale[scale == 0] = 1.0
        out = sparse.csr_matrix(sparse.diags(1.0 / scale) @ out)
    return out


def with_labels(dataset, matrix, names):
    """A copy of a Dataset whose labels are ``matrix`` (study x label, rows in the Dataset's
    experiment order) named ``names``.

    For a Collection, pass the matrix to the decoder's ``fit(..., label_matrix=,
    label_names=)`` instead (a collection's Dataset is part of its identity).
    """
    import copy

    matrix, names = _label_matrix(dataset, matrix, names)
    out = copy.copy(dataset)
    out.__dict__ = {k: v for k, v in dataset.__dict__.items() if k != "_csc_labels"}
    out.labels, out.label_names = sparse.csr_matrix(matrix), names
    return out
