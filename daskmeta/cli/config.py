"""``daskmeta config``: the settings in force (dask config ``daskmeta.*``), each with the
environment variable that overrides it."""

from __future__ import annotations

import json

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "config", help="print daskmeta's settings in force",
        description="Print every daskmeta setting (dask config daskmeta.*) with its value in "
                    "force (from daskmeta.yaml, dask's YAML files in ~/.config/dask/, or "
                    "DASK_DASKMETA__... environment variables) and the environment variable "
                    "that overrides it. Credentials print as ***.")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object {key: value} instead of a table")
    p.set_defaults(handler=_run_config)


def _shown(key: str, value):
    from daskmeta.config import SECRET_KEYS

    return "***" if key in SECRET_KEYS and value not in (None, "") else value


def _text(value) -> str:
    return "null" if value is None else json.dumps(value) if not isinstance(value, str) \
        else value


def _run_config(args) -> None:
    from daskmeta import config

    rows = [(key, _shown(key, value), env) for key, value, env in config.settings()]
    if args.json:
        print(json.dumps({key: value for key, value, _ in rows}, indent=2, default=str))
        return
    width = max(len(k) for k, _, _ in rows)
    vwidth = max(len(_text(v)) for _, v, _ in rows)
    for key, value, env in rows:
        print(f"{key:<{width}}  {_text(value):<{vwidth}}  {env}")
