"""daskmeta's settings in :mod:`dask.config`, under the key ``daskmeta``.

The defaults are in the package's ``daskmeta.yaml``, loaded with
:func:`dask.config.update_defaults` when daskmeta is imported; values set with
:func:`dask.config.set`, in dask's YAML config files or in ``DASK_DASKMETA__...`` environment
variables take precedence:

=============================================  =======  ==============================================
key                                            default  environment variable
=============================================  =======  ==============================================
``daskmeta.progress``                          auto     ``DASK_DASKMETA__PROGRESS``
``daskmeta.figure-process``                    true     ``DASK_DASKMETA__FIGURE_PROCESS``
``daskmeta.chunk-size``                        64       ``DASK_DASKMETA__CHUNK_SIZE``
``daskmeta.fit-many.memory``                   2GB      ``DASK_DASKMETA__FIT_MANY__MEMORY``
``daskmeta.montecarlo.batch-size``             100      ``DASK_DASKMETA__MONTECARLO__BATCH_SIZE``
``daskmeta.collection.rows-per-shard``         64       ``DASK_DASKMETA__COLLECTION__ROWS_PER_SHARD``
``daskmeta.cache-dir``                         null     ``DASK_DASKMETA__CACHE_DIR``
``daskmeta.data-dir``                          null     ``DASK_DASKMETA__DATA_DIR``
``daskmeta.scheduler-address``                 null     ``DASK_DASKMETA__SCHEDULER_ADDRESS``
``daskmeta.s3.endpoint-url``                   null     ``DASK_DASKMETA__S3__ENDPOINT_URL``
``daskmeta.s3.region``                         null     ``DASK_DASKMETA__S3__REGION``
``daskmeta.s3.anon``                           false    ``DASK_DASKMETA__S3__ANON``
``daskmeta.s3.key`` / ``daskmeta.s3.secret``   null     ``DASK_DASKMETA__S3__KEY`` / ``..._SECRET``
``daskmeta.s3.lock-lease`` (seconds)           60       ``DASK_DASKMETA__S3__LOCK_LEASE``
=============================================  =======  ==============================================

:func:`settings` lists every setting with its value in force (``daskmeta config`` prints
them).
"""

from __future__ import annotations

import numbers
from importlib import resources

import dask
import dask.config
import dask.utils
import yaml

from daskmeta.exceptions import DaskmetaError

__all__ = ["DEFAULTS", "env_var", "get", "get_bytes", "get_positive_int", "lock_lease",
           "parse_bytes", "scheduler_address", "settings", "storage_options"]


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


def is_positive_int(value) -> bool:
    """Whether ``value`` is an integer >= 1 (not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def get_positive_int(key: str) -> int:
    """A count setting in force (e.g. ``collection.rows-per-shard``), checked."""
    value = get(key)
    if not is_positive_int(value):
        raise DaskmetaError(f"dask config {_full_key(key)}={value!r} must be a positive "
                            "integer")
    return int(value)


def env_var(key: str) -> str:
    """The environment variable that overrides a setting, e.g. ``DASK_DASKMETA__S3__REGION``."""
    parts = _full_key(key).split(".")
    return "DASK_" + "__".join(p.upper().replace("-", "_") for p in parts)


#: Settings whose values ``daskmeta config`` does not print.
SECRET_KEYS = ("daskmeta.s3.key", "daskmeta.s3.secret")


def settings() -> list[tuple[str, object, str]]:
    """Every daskmeta setting: ``(key, value in force, environment variable)``, in the order
    of ``daskmeta.yaml``; keys the package does not define (a user's addition) follow."""

    def walk(prefix, defaults, current, out):
        # dask reads "_" and "-" alike (DASK_DASKMETA__S3__ENDPOINT_URL sets endpoint_url).
        current = {str(k).replace("_", "-"): v for k, v in current.items()}
        keys = list(defaults) + [k for k in current if k not in defaults]
        for k in keys:
            full = f"{prefix}.{k}"
            default = defaults.get(k)
            value = current.get(k, default)
            if isinstance(default, dict):
                walk(full, default, value if isinstance(value, dict) else {}, out)
            else:
                out.append((full, value, env_var(full)))
        return out

    current = dask.config.get("daskmeta", {})
    return walk("daskmeta", DEFAULTS["daskmeta"], current if isinstance(current, dict) else {},
                [])


def scheduler_address(address: str | None = None) -> tuple[str | None, str]:
    """The scheduler to connect to and where its address came from: ``address`` (e.g. a
    ``--scheduler`` option), else ``daskmeta.scheduler-address``, else dask's
    ``scheduler-address`` (the ``DASK_SCHEDULER_ADDRESS`` environment variable); ``(None,
    "")`` for none (an embedded cluster)."""
    import os

    if address:
        return str(address), "--scheduler"
    configured = get("scheduler-address")
    if configured:
        return str(configured), "dask config daskmeta.scheduler-address"
    env = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if env:
        return env, "DASK_SCHEDULER_ADDRESS"
    return None, ""


def _flag(key: str) -> bool:
    value = get(key)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off", ""):
            return False
    elif isinstance(value, bool) or value is None:
        return bool(value)
    raise DaskmetaError(f"dask config {_full_key(key)}={value!r} must be true or false")


def storage_options(url: str | None = None) -> dict:
    """fsspec ``storage_options`` of an object-store URL from the ``daskmeta.s3`` settings
    (empty for other URLs and for settings left at null)."""
    if url is not None and not str(url).startswith(("s3://", "s3a://")):
        return {}
    options: dict = {}
    endpoint = get("s3.endpoint-url")
    if endpoint:
        options["endpoint_url"] = str(endpoint)
    region = get("s3.region")
    if region:
        options["client_kwargs"] = {"region_name": str(region)}
    if _flag("s3.anon"):
        options["anon"] = True
    for name in ("key", "secret"):
        value = get(f"s3.{name}")
        if value:
            options[name] = str(value)
    return options


def lock_lease() -> float:
    """Seconds a build's lock on an object-store collection lasts unless renewed."""
    value = get("s3.lock-lease")
    try:
        lease = float(value)
    except (TypeError, ValueError):
        lease = float("nan")
    if isinstance(value, bool) or not lease >= 1:
        raise DaskmetaError(f"dask config daskmeta.s3.lock-lease={value!r} must be a number of "
                            "seconds >= 1")
    return lease
