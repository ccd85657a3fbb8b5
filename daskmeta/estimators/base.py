"""The estimator contract every daskmeta estimator follows (scikit-learn and nilearn).

- ``__init__`` only stores keyword parameters; :meth:`Estimator.get_params` /
  :meth:`~Estimator.set_params` / :meth:`~Estimator.clone` see exactly them (and, deep, the
  parameters of parameters that have ``get_params``, such as a kernel).
- Parameter constraints are declared once per class (``_parameter_constraints``: name ->
  ``(check, what is allowed)``) and checked by ``fit`` before any work.
- A public ``fit`` checks and returns a :class:`~daskmeta.MetaResult`; a private ``_fit``
  works. Fitted state ends in ``_``.
- A result keeps a frozen **snapshot** of the fitted estimator (:meth:`Estimator._snapshot`:
  parameters, plan, weights, mask, read-only), never the live object, so refitting or
  changing the estimator later cannot change a correction of an earlier result.
- Estimators with a Monte Carlo null return it from :meth:`Estimator._null_model` (see
  :mod:`daskmeta.montecarlo`).
"""

from __future__ import annotations

import copy
import inspect
import numbers

import numpy as np

from daskmeta._version import __version__
from daskmeta.config import is_positive_int
from daskmeta.exceptions import DaskmetaError, NotFittedError

__all__ = ["Estimator", "positive_int", "non_negative", "one_of"]


#: Whether a parameter is an integer >= 1 (not a bool).
positive_int = is_positive_int


def non_negative(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and bool(value >= 0))


def one_of(*allowed):
    def check(value) -> bool:
        return any(value is a or (isinstance(a, str) and value == a) for a in allowed)
    return check


def _scalar(value):
    """A provenance-friendly form of a parameter value."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


class Estimator:
    """Base class of every estimator (coordinate- and image-based).

    Subclasses declare their parameters in ``__init__`` (keywords only stored), their
    constraints in ``_parameter_constraints``, and implement ``fit`` (check, then ``_fit``).
    """

    #: name -> (check(value) -> bool, text saying what is allowed); merged along the MRO.
    _parameter_constraints: dict = {}
    #: The attribute whose presence means "fitted".
    _fitted_marker = "space_"

    # -- parameters ------------------------------------------------------------------------
    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]

    def _extra_params(self) -> dict:
        """Parameters beyond ``__init__``'s named ones (e.g. ``kernel__*`` keywords)."""
        return {}

    def _set_extra_param(self, name: str, value) -> bool:
        """Set a parameter beyond the named ones; False if ``name`` is not one."""
        return False

    def get_params(self, deep: bool = True) -> dict:
        """The estimator's parameters.

        Parameters
        ----------
        deep : bool
            Also list the parameters of parameters that have ``get_params`` (e.g. a kernel
            object's, as ``kernel_transformer__fwhm``) and of the kernel in use
            (``kernel__*``, NiMARE's names).

        Returns
        -------
        dict
            ``type(self)(**self.get_params(deep=False))`` is an unfitted copy.
        """
        out = {name: getattr(self, name) for name in self._get_param_names()}
        out.update(self._extra_params())
        if deep:
            for name, value in list(out.items()):
                if hasattr(value, "get_params") and not isinstance(value, type):
                    out.update({f"{name}__{k}": v for k, v in value.get_params().items()})
            out.update(self._deep_params())
        return out

    def _deep_params(self) -> dict:
        return {}

    def set_params(self, **params):
        """Set parameters (those of ``get_params(deep=False)``); returns ``self``.

        Raises
        ------
        DaskmetaError
            For a name that is not a parameter of this estimator.
        """
        names = set(self._get_param_names())
        for name, value in params.items():
            if name in names:
                setattr(self, name, value)
            elif not self._set_extra_param(name, value):
                raise DaskmetaError(
                    f"{type(self).__name__} has no parameter {name!r}; parameters: "
                    f"{', '.join(sorted(names))}"
                )
        return self

    def clone(self):
        """An unfitted copy with the same parameters (deep-copied)."""
        return type(self)(**copy.deepcopy(self.get_params(deep=False)))

    def __repr__(self) -> str:
        params = self.get_params(deep=False)
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items() if v is not None)
        return f"{type(self).__name__}({shown})"

    @classmethod
    def _constraints(cls) -> dict:
        merged: dict = {}
        for klass in reversed(cls.__mro__):
            merged.update(klass.__dict__.get("_parameter_constraints", {}))
        return merged

    def _validate_params(self) -> None:
        """Check every declared constraint; the error names the parameter, the value and
        what is allowed."""
        for name, (check, allowed) in self._constraints().items():
            value = getattr(self, name)
            if not check(value):
                raise DaskmetaError(f"{type(self).__name__}: {name} must be {allowed}; got "
                                    f"{value!r}")

    # -- fitted state ----------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, self._fitted_marker):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(dataset) first"
            )

    def _fitted_state(self) -> dict:
        return {k: v for k, v in self.__dict__.items()
                if k.endswith("_") and not k.startswith("_")}

    def _snapshot(self):
        """A frozen copy of this fitted estimator: its parameters and fitted state as of now
        (arrays read-only). Results keep it, so nothing done later to this estimator changes
        what their corrections compute."""
        self._check_fitted()
        snap = copy.copy(self)
        snap.__dict__ = dict(self.__dict__)
        for name, value in self.__dict__.items():
            # Kernels and containers of parameters (kernel__* keywords) are copied; other
            # objects (a mask's Space) are treated as immutable.
            if not name.endswith("_") and (hasattr(value, "get_params")
                                           or isinstance(value, dict | list)):
                snap.__dict__[name] = copy.deepcopy(value)
        for name, value in self._fitted_state().items():
            setattr(snap, name, _frozen(value))
        snap._is_snapshot = True
        return snap

    def describe(self) -> dict:
        """Parameters and provenance for result attributes."""
        self._check_fitted()
        params = {k: v for k, v in self.get_params(deep=True).items() if k != "mask"}
        return {
            "estimator": type(self).__name__,
            "daskmeta_version": __version__,
            **{k: _scalar(v) for k, v in params.items()
               if v is not None and not hasattr(v, "get_params")},
        }

    def _make_result(self, maps: dict, null_distributions: dict | None = None,
                     attrs: dict | None = None):
        from daskmeta.results import MetaResult

        return MetaResult(maps, self.space_, attrs={**self.describe(), **(attrs or {})},
                          estimator=self._snapshot(),
                          null_distributions=null_distributions)

    def _null_model(self):
        """The Monte Carlo null of this fitted estimator (a
        :class:`~daskmeta.montecarlo.NullModel`)."""
        raise DaskmetaError(
            f"Monte Carlo correction is not available for {type(self).__name__}"
        )


def _frozen(value):
    """``value`` made read-only in place (arrays, plans), or copied (kernels, dicts)."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
        return value
    if hasattr(value, "get_params"):
        return copy.deepcopy(value)
    freeze = getattr(value, "freeze", None)
    if callable(freeze):
        return freeze()
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value
