"""Image-based meta-analysis estimators (NiMARE 0.22.1's, blockwise over voxel chunks).

Combination tests of z images (:class:`Stouffers`, :class:`Fishers`), meta-regressions of
beta and varcope images (:class:`WeightedLeastSquares`, :class:`DerSimonianLaird`,
:class:`Hedges`, :class:`VarianceBasedLikelihood`), of beta images and sample sizes
(:class:`SampleSizeBasedLikelihood`), of t images and sample sizes
(:class:`FixedEffectsHedges`), and the sign-flip one-sample test of beta images
(:class:`PermutedOLS`, with a Monte Carlo FWE correction). Each fits PyMARE's estimator (as
NiMARE does) per block of voxels; see :mod:`daskmeta.estimators._ibma_base`.

Maps (NiMARE's names): combination tests ``z, p, logp, dof``; meta-regressions
``z, p, logp, est, se, [tau2], [sigma2], dof``; PermutedOLS ``t, z, p, logp, dof``.
"""

from __future__ import annotations

import numpy as np

from daskmeta._docs import fill_doc
from daskmeta._stats import nlogp_to_logp, nlogp_to_z, t_to_nlogp, t_to_z
from daskmeta.estimators._ibma_base import IBMAEstimator
from daskmeta.estimators.base import non_negative, one_of

__all__ = ["DerSimonianLaird", "Fishers", "FixedEffectsHedges", "Hedges", "IBMAEstimator",
           "PermutedOLS", "SampleSizeBasedLikelihood", "Stouffers",
           "VarianceBasedLikelihood", "WeightedLeastSquares"]

_bool = (lambda v: isinstance(v, bool | np.bool_), "True or False")
_SMALL = (None, "knapp-hartung", "knapp-hartung-conservative", "wald")
_WEIGHTS = ("rescale", "individual", "collapse")


def _flat(x, n):
    return np.asarray(x, dtype=float).reshape(n)


# --------------------------------------------------------------------------------------------
# combination tests
# --------------------------------------------------------------------------------------------
class _Combination(IBMAEstimator):
    _inputs = ("z",)
    _map_names = ("z", "p", "logp", "dof")
    _parameter_constraints = {"two_sided": _bool, "use_sample_size": _bool}

    def _uses_sample_size(self) -> bool:
        return bool(self.use_sample_size)

    def _combination(self, arrays, studies, est, weights):
        import pymare

        (z,) = arrays
        n_vox = z.shape[1]
        est.fit_dataset(pymare.Dataset(y=z, n=weights), corr=None)
        s = est.summary()
        return (_flat(s.z, n_vox), _flat(s.p, n_vox), _flat(s.logp, n_vox),
                float(len(studies) - 1))


@fill_doc
class Stouffers(_Combination):
    """Stouffer's combination of z images (NiMARE's ``Stouffers``).

    Parameters
    ----------
    use_sample_size : bool
        Weight each image by the square root of its sample size (weighted Stouffer's).
    two_sided : bool
        Two-sided test (NiMARE's default) or one-sided (positive effects).
    aggressive_mask : bool
        Analyse only voxels usable in every image (default False: NiMARE's liberal mask).
    groupby : None or False
        See :class:`IBMAEstimator`.
    %(mask)s
    """

    def __init__(self, use_sample_size=False, two_sided=True, aggressive_mask=False,
                 groupby=None, mask=None):
        self.use_sample_size = use_sample_size
        self.two_sided = two_sided
        self.aggressive_mask = aggressive_mask
        self.groupby = groupby
        self.mask = mask

    def _model(self, arrays, studies):
        import pymare

        weights = np.ones(len(studies))
        if self.use_sample_size:
            weights = weights * np.sqrt(self._sizes[studies])
        est = pymare.estimators.StoufferCombinationTest(
            mode="concordant" if self.two_sided else "directed", group_level=False)
        return self._combination(arrays, studies, est, weights[:, None])


@fill_doc
class Fishers(_Combination):
    """Fisher's combination of z images (NiMARE's ``Fishers``).

    Parameters
    ----------
    two_sided : bool
        Two-sided test (NiMARE's default) or one-sided.
    use_sample_size : bool
        Weighted Fisher's with each image's sample size as its coefficient.
    aggressive_mask : bool
    groupby : None or False
    %(mask)s
    """

    def __init__(self, two_sided=True, use_sample_size=False, aggressive_mask=False,
                 groupby=None, mask=None):
        self.two_sided = two_sided
        self.use_sample_size = use_sample_size
        self.aggressive_mask = aggressive_mask
        self.groupby = groupby
        self.mask = mask

    def _model(self, arrays, studies):
        import pymare

        weights = self._sizes[studies][:, None] if self.use_sample_size else None
        est = pymare.estimators.FisherCombinationTest(
            mode="concordant" if self.two_sided else "directed")
        return self._combination(arrays, studies, est, weights)


# --------------------------------------------------------------------------------------------
# meta-regressions (PyMARE)
# --------------------------------------------------------------------------------------------
class _Regression(IBMAEstimator):
    _inputs = ("beta", "varcope")
    _extra: tuple = ()
    _map_names = ("z", "p", "logp", "est", "se", "dof")
    _pymare_name = ""
    _parameter_constraints = {
        "weight_scheme": (one_of(*_WEIGHTS), f"one of {', '.join(_WEIGHTS)}"),
        "small_sample_correction": (one_of(*_SMALL), "None, 'knapp-hartung', "
                                    "'knapp-hartung-conservative' or 'wald'"),
        "rho": (lambda v: non_negative(v) and v <= 1, "a number in [0, 1]"),
    }

    def _estimator_kwargs(self) -> dict:
        return {}

    def _pymare_dataset(self, arrays, studies):
        import pymare

        beta, varcope = arrays
        return pymare.Dataset(y=beta, v=varcope)

    def _model(self, arrays, studies):
        import pymare

        kwargs = {**self._estimator_kwargs(), "weight_scheme": self.weight_scheme}
        if self.small_sample_correction is not None:
            kwargs["small_sample_correction"] = self.small_sample_correction
        est = getattr(pymare.estimators, self._pymare_name)(**kwargs)
        est.fit_dataset(self._pymare_dataset(arrays, studies))
        s = est.summary()
        fe = s.get_fe_stats()
        n_vox = arrays[0].shape[1]
        extra = []
        for name in self._extra:
            extra.append(_flat(s.tau2 if name == "tau2" else est.params_["sigma2"], n_vox))
        dof = s.fe_dof
        dof = float(len(studies) - 1) if dof is None else _flat(dof, n_vox)
        return (_flat(fe["z"], n_vox), _flat(fe["p"], n_vox), _flat(fe["logp"], n_vox),
                _flat(fe["est"], n_vox), _flat(fe["se"], n_vox), *extra, dof)


def _regression_init(self, weight_scheme, rho, small_sample_correction, aggressive_mask,
                     groupby, mask):
    self.weight_scheme = weight_scheme
    self.rho = rho
    self.small_sample_correction = small_sample_correction
    self.aggressive_mask = aggressive_mask
    self.groupby = groupby
    self.mask = mask


_REGRESSION_DOC = """
    weight_scheme : {"rescale", "individual", "collapse"}
        PyMARE's weighting of images within a group (no effect without groups).
    rho : float
        Assumed within-group correlation (no effect without groups).
    small_sample_correction : None or {"knapp-hartung", "knapp-hartung-conservative", "wald"}
        PyMARE's small-sample correction (None: PyMARE's default for the estimator).
    aggressive_mask : bool
    groupby : None or False
    %(mask)s
"""


def _doc(cls):
    cls.__doc__ = cls.__doc__.replace("    %(regression)s\n", _REGRESSION_DOC.lstrip("\n"))
    return fill_doc(cls)


@_doc
class WeightedLeastSquares(_Regression):
    """Weighted least-squares meta-regression of beta and varcope images, known tau^2
    (NiMARE's ``WeightedLeastSquares``).

    Parameters
    ----------
    tau2 : float
        Assumed between-study variance (>= 0; 0 is the fixed-effects model).
    %(regression)s
    """

    _pymare_name = "WeightedLeastSquares"
    _parameter_constraints = {"tau2": (non_negative, "a number >= 0")}

    def __init__(self, tau2=0, weight_scheme="rescale", rho=0.8, small_sample_correction=None,
                 aggressive_mask=False, groupby=None, mask=None):
        self.tau2 = tau2
        _regression_init(self, weight_scheme, rho, small_sample_correction, aggressive_mask,
                         groupby, mask)

    def _estimator_kwargs(self):
        return {"tau2": self.tau2}


@_doc
class DerSimonianLaird(_Regression):
    """DerSimonian-Laird random-effects meta-regression of beta and varcope images
    (NiMARE's ``DerSimonianLaird``; maps add ``tau2``).

    Parameters
    ----------
    %(regression)s
    """

    _pymare_name = "DerSimonianLaird"
    _extra = ("tau2",)
    _map_names = ("z", "p", "logp", "est", "se", "tau2", "dof")

    def __init__(self, weight_scheme="rescale", rho=0.8, small_sample_correction=None,
                 aggressive_mask=False, groupby=None, mask=None):
        _regression_init(self, weight_scheme, rho, small_sample_correction, aggressive_mask,
                         groupby, mask)


@_doc
class Hedges(_Regression):
    """Hedges' random-effects meta-regression of beta and varcope images (NiMARE's
    ``Hedges``; maps add ``tau2``).

    Parameters
    ----------
    %(regression)s
    """

    _pymare_name = "Hedges"
    _extra = ("tau2",)
    _map_names = ("z", "p", "logp", "est", "se", "tau2", "dof")

    def __init__(self, weight_scheme="rescale", rho=0.8, small_sample_correction=None,
                 aggressive_mask=False, groupby=None, mask=None):
        _regression_init(self, weight_scheme, rho, small_sample_correction, aggressive_mask,
                         groupby, mask)


@_doc
class VarianceBasedLikelihood(_Regression):
    """Maximum-likelihood (or REML) meta-regression of beta and varcope images (NiMARE's
    ``VarianceBasedLikelihood``; maps add ``tau2``). One optimisation per voxel: slow.

    Parameters
    ----------
    method : {"ml", "reml"}
    %(regression)s
    """

    _pymare_name = "VarianceBasedLikelihoodEstimator"
    _extra = ("tau2",)
    _map_names = ("z", "p", "logp", "est", "se", "tau2", "dof")
    _parameter_constraints = {"method": (one_of("ml", "reml"), "'ml' or 'reml'")}

    def __init__(self, method="ml", weight_scheme="rescale", rho=0.8,
                 small_sample_correction=None, aggressive_mask=False, groupby=None, mask=None):
        self.method = method
        _regression_init(self, weight_scheme, rho, small_sample_correction, aggressive_mask,
                         groupby, mask)

    def _estimator_kwargs(self):
        return {"method": self.method}


@_doc
class SampleSizeBasedLikelihood(_Regression):
    """Likelihood meta-regression of beta images with known sample sizes and a common
    unknown within-study variance (NiMARE's ``SampleSizeBasedLikelihood``; maps add ``tau2``
    and ``sigma2``). One optimisation per voxel: slow.

    Parameters
    ----------
    method : {"ml", "reml"}
    %(regression)s
    """

    _pymare_name = "SampleSizeBasedLikelihoodEstimator"
    _inputs = ("beta",)
    _extra = ("tau2", "sigma2")
    _map_names = ("z", "p", "logp", "est", "se", "tau2", "sigma2", "dof")
    _needs_sample_size = True
    _parameter_constraints = {"method": (one_of("ml", "reml"), "'ml' or 'reml'")}

    def __init__(self, method="ml", weight_scheme="rescale", rho=0.8,
                 small_sample_correction=None, aggressive_mask=False, groupby=None, mask=None):
        self.method = method
        _regression_init(self, weight_scheme, rho, small_sample_correction, aggressive_mask,
                         groupby, mask)

    def _estimator_kwargs(self):
        return {"method": self.method}

    def _pymare_dataset(self, arrays, studies):
        import pymare

        (beta,) = arrays
        # Tiled to (K x V) as NiMARE does: the optimiser's answers depend on the layout in
        # the last digits.
        return pymare.Dataset(y=beta, n=np.tile(self._sizes[studies], (beta.shape[1], 1)).T)


@_doc
class FixedEffectsHedges(_Regression):
    """Fixed-effects meta-regression of Hedges' g from t images and sample sizes (NiMARE's
    ``FixedEffectsHedges``).

    Parameters
    ----------
    tau2 : float
        Assumed between-study variance (>= 0).
    %(regression)s
    """

    _pymare_name = "WeightedLeastSquares"
    _inputs = ("t",)
    _needs_sample_size = True
    _parameter_constraints = {"tau2": (non_negative, "a number >= 0")}

    def __init__(self, tau2=0, weight_scheme="rescale", rho=0.8, small_sample_correction=None,
                 aggressive_mask=False, groupby=None, mask=None):
        self.tau2 = tau2
        _regression_init(self, weight_scheme, rho, small_sample_correction, aggressive_mask,
                         groupby, mask)

    def _estimator_kwargs(self):
        return {"tau2": self.tau2}

    def _pymare_dataset(self, arrays, studies):
        import pymare

        (t,) = arrays
        n = self._sizes[studies][:, None]
        d = t / np.sqrt(n)
        h = 1 - (3 / (4 * (n - 1) - 1))
        g = d * h
        g_var = ((n - 1) * (1 + n * d ** 2) * (h ** 2) / (n * (n - 3))) - d ** 2
        return pymare.Dataset(y=g, v=g_var)


# --------------------------------------------------------------------------------------------
# PermutedOLS
# --------------------------------------------------------------------------------------------
def one_sample_t(values: np.ndarray, weights=None):
    """One-sample t over the rows of ``values`` (and its dof): NiMARE's ``_permuted_ols``
    statistic for independent images (equal weights), or the CR2 statistic with
    ``weights``."""
    from pymare import stats as pst

    k = values.shape[0]
    if weights is None:
        t = pst.one_sample_t_from_sufficient_statistics(
            values.sum(axis=0), np.einsum("ij,ij->j", values, values), k)
        return t, float(k - 1)
    suff = pst.weighted_intercept_cr2_sufficient_statistics(values, weights)
    t = pst.weighted_intercept_cr2(np.ones((1, k)), suff).squeeze(axis=0)
    dof = float(np.ravel(pst.satterthwaite_dof(np.ones((k, 1)), weights[:, None],
                                               np.arange(k)))[0])
    return t, dof


@fill_doc
class PermutedOLS(IBMAEstimator):
    """One-sample OLS t-test of beta images with a sign-flip null (NiMARE's
    ``PermutedOLS``).

    Voxel-level FWE correction: ``FWECorrector(method="montecarlo")`` flips every image's
    sign at random (one sign per image, shared by all voxels), seeded in batches as Dask
    tasks (identical on any number of workers), and records the maximum z of each
    iteration (per bag of voxels, the maximum absolute t converted to z with the bag's dof).

    Parameters
    ----------
    two_sided : bool
        Two-sided test (default) or one-sided.
    use_sample_size : bool
        Weight each image by its sample size (the CR2 statistic, Satterthwaite dof).
    aggressive_mask : bool
    groupby : None or False
    %(mask)s
    """

    _inputs = ("beta",)
    _map_names = ("t", "z", "p", "logp", "dof")
    _parameter_constraints = {"two_sided": _bool, "use_sample_size": _bool}

    def __init__(self, two_sided=True, use_sample_size=False, aggressive_mask=False,
                 groupby=None, mask=None):
        self.two_sided = two_sided
        self.use_sample_size = use_sample_size
        self.aggressive_mask = aggressive_mask
        self.groupby = groupby
        self.mask = mask

    def _uses_sample_size(self) -> bool:
        return bool(self.use_sample_size)

    def _model(self, arrays, studies):
        (beta,) = arrays
        weights = self._sizes[studies] if self.use_sample_size else None
        t, dof = one_sample_t(beta, weights)
        nlogp = t_to_nlogp(t, dof, tail="two" if self.two_sided else "one")
        return t, t_to_z(t, dof), np.exp(nlogp), nlogp, dof

    def _null_model(self):
        from daskmeta.estimators._signflip import SignFlipNull

        self._check_fitted()
        return SignFlipNull(self.stack_, self.rows_, self.sample_sizes_ if
                            self.use_sample_size else None, bool(self.two_sided),
                            bool(self.aggressive_mask))

    def _correct_fwe_montecarlo(self, result, corrector):
        """:class:`~daskmeta.FWECorrector`'s Monte Carlo method on this estimator's result."""
        from daskmeta.correct import own_null_voxel_fwe

        return own_null_voxel_fwe(corrector, result, self)

    def _fwe_montecarlo(self, result, n_iters, seed, batch_size, progress):
        """NiMARE's ``correct_fwe_montecarlo``: maps ``{p,z,logp}_level-voxel`` from the
        maximum-z sign-flip null (run by :func:`daskmeta.montecarlo.run_montecarlo`)."""
        from daskmeta import montecarlo as mc
        from daskmeta.estimators._signflip import empirical_max_p

        model = self._null_model()
        run = mc.run_montecarlo(model, mc.MaxStatistic(), n_iters, batch_size, seed,
                                progress=progress)
        h0 = np.asarray(run.values["max_stat"], dtype=float)
        observed = np.asarray(result.get_map("z", "array"), dtype=float)
        p = np.full(observed.shape, np.nan)
        valid = np.isfinite(observed)
        p[valid] = empirical_max_p(observed[valid], h0, self.two_sided)
        sign = np.sign(observed)
        sign[sign == 0] = 1
        with np.errstate(invalid="ignore"):
            nlogp = np.log(p)
            z = nlogp_to_z(nlogp, tail="two" if self.two_sided else "one") * sign
        logp = nlogp_to_logp(nlogp)
        logp[~valid] = np.nan
        maps = {"p_level-voxel": p, "z_level-voxel": z, "logp_level-voxel": logp}
        return maps, h0, run

