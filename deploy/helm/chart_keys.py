"""Write the list of value keys the official ``dask`` Helm chart reads, for the test of
``deploy/helm/values.yaml`` (``tests/test_deploy.py``), which runs offline.

    python deploy/helm/chart_keys.py PATH/TO/helm-chart/dask > deploy/helm/dask-chart-keys.txt

``PATH/TO/helm-chart/dask`` is the chart's folder in a checkout of
https://github.com/dask/helm-chart (or ``helm pull dask/dask --untar``). A key is listed if
the chart's ``values.yaml`` defines it or a template reads it (``.Values.a.b``). A key marked
``*`` takes any content below it (its default is an empty mapping, a list or null: pod
resources, environment variables, tolerations, ...).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml


def keys(chart: Path) -> dict[str, bool]:
    """Dotted key -> whether any content may go below it."""
    out: dict[str, bool] = {}

    def walk(prefix, node):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out[key] = False
                walk(f"{key}.", v)
            else:
                out[key] = not isinstance(v, str | int | float | bool) or v is None
    walk("", yaml.safe_load((chart / "values.yaml").read_text()))
    for template in sorted((chart / "templates").glob("*")):
        for ref in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", template.read_text()):
            parts = ref.split(".")
            for n in range(1, len(parts) + 1):
                out.setdefault(".".join(parts[:n]), False)
    return out


def main() -> None:
    chart = Path(sys.argv[1])
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    print(f"# Value keys of the dask Helm chart (appVersion {meta.get('appVersion')}), made by "
          "deploy/helm/chart_keys.py")
    for key, free in sorted(keys(chart).items()):
        print(f"{key} *" if free else key)


if __name__ == "__main__":
    main()
