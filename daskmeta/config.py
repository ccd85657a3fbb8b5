"""daskmeta's settings in :mod:`dask.config`, under the key ``daskmeta``.

The defaults are in the package's ``daskmeta.yaml``, loaded with
:func:`dask.config.update_defaults` when daskmeta is imported; values set with
:func:`dask.config.set`, in dask's YAML config files or in ``DASK_DASKMETA__...`` environment
variables take precedence:

========================================  =======  ==============================================
key                                       default  environment variable
========================================  =======  ==============================================
``daskmeta.progress``                     auto     ``DASK_DASKMETA__PROGRESS``
``daskmeta.chunk-size``                   64       ``DASK_DASKMETA__CHUNK_SIZE``
``daskmeta.fit-many.memory``              2GB      ``DASK_DASKMETA__FIT_MANY__MEMORY``
``daskmeta.montecarlo.batch-size``        100      ``DASK_DASKMETA__MONTECARLO__BATCH_SIZE``
``daskmeta.collection.rows-per-shard``    64       ``DASK_DASKMETA__COLLECTION__ROWS_PER_SHARD``
========================================  =======  ==============================================
"""

from __future__ import annotations

import numbers
from importlib import resources

import dask
import dask.config
import dask.utils
import yaml

from daskmeta.exceptions import DaskmetaError

__all__ = ["DEFAULTS", "get", "get_bytes", "get_positive_int", "parse_bytes"]


def _load_defaults() -> dict:
    text = resources.files("daskmeta").joinpath("daskmeta.yaml").read_text(encoding="utf-8")
    defaults = yaml.safe_load(text)
    if not isinstance(defaults, dict) or not isinstance(defaults.get("daskmeta"), dict):
        raise DaskmetaError("daskmeta.yaml must hold a mapping under the key 'daskmeta'")
    return defaults


#: The package's defaults, as read from ``daskmeta.yaml``.
DEFAULTS = _load_defaults()
dask.config.update_defaults(DEFAULTS)


def _full_key(key: str) -> str:
    return key if key.startswith("daskmeta.") else f"daskmeta.{key}"


def get(key: str):
    """The value in force of a daskmeta setting, e.g. ``get("montecarlo.batch-size")``.

    ``key`` may start with ``daskmeta.``; ``_`` and ``-`` are interchangeable (as in
    dask). Reflects :func:`dask.config.set` blocks and ``DASK_DASKMETA__...`` environment
    variables (read when dask is imported, or by :func:`dask.config.refresh`).
    """
    return dask.config.get(_full_key(key))


def parse_bytes(value, key: str | None = None) -> int:
    """A positive byte count from a number or a string such as ``"2GB"`` or ``"512MiB"``.

    Raises
    ------
    DaskmetaError
        Naming the setting (``key``) and the value received.
    """
    try:
        if isinstance(value, str):
            # dask reads a bare unit ("GB") as one of it; a byte count needs a number.
            if not any(c.isdigit() for c in value):
                raise ValueError
            n = dask.utils.parse_bytes(value)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            n = value
        else:
            raise TypeError
        n = int(n)
    except (TypeError, ValueError, OverflowError):
        n = None
    if n is None or n < 1:
        what = f"dask config {_full_key(key)}={value!r}" if key else repr(value)
        raise DaskmetaError(f"{what} is not a byte count: give a positive number of bytes or "
                            "a size such as '2GB' or '512MiB'")
    return n


def get_bytes(key: str) -> int:
    """A memory setting in force, as bytes (see :func:`parse_bytes`)."""
    return parse_bytes(get(key), key)


def get_positive_int(key: str) -> int:
    """A count setting in force (e.g. ``collection.rows-per-shard``), checked."""
    value = get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise DaskmetaError(f"dask config {_full_key(key)}={value!r} must be a positive "
                            "integer")
    return int(value)
