"""Progress lines of long operations (daskmeta.progress) under the local scheduler and under
a distributed Client: shown when asked, silent when not, one format everywhere."""

from __future__ import annotations

import io
import re

import dask
import numpy as np
import pytest

from daskmeta import progress as prog
from daskmeta.exceptions import DaskmetaError

LINE = re.compile(r"\[daskmeta\] (?P<label>[^:]+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) "
                  r"\((?P<pct>\d+)%, [\d.]+ s\)")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def _final(text: str) -> dict:
    lines = [m.groupdict() for m in LINE.finditer(text)]
    assert lines, f"no progress line in {text!r}"
    return lines[-1]


def test_enabled_follows_argument_config_and_terminal():
    assert prog.enabled(True, io.StringIO()) is True
    assert prog.enabled(False, _Tty()) is False
    assert prog.enabled(None, io.StringIO()) is False
    assert prog.enabled(None, _Tty()) is True
    with dask.config.set({"daskmeta.progress": True}):
        assert prog.enabled(None, io.StringIO()) is True
    with dask.config.set({"daskmeta.progress": "false"}):
        assert prog.enabled(None, _Tty()) is False
    with dask.config.set({"daskmeta.progress": "sometimes"}):
        with pytest.raises(DaskmetaError, match=r"daskmeta.progress='sometimes' must be true"):
            prog.enabled(None)


def test_progress_line_on_a_terminal_and_in_a_log():
    tty = _Tty()
    with prog.Progress("figures", 4, "figures", progress=True, stream=tty,
                       interval=0.0) as bar:
        for _ in range(4):
            bar.advance()
    text = tty.getvalue()
    assert text.startswith("\r[daskmeta] figures: 0/4") or "\r[daskmeta] figures: 1/4" in text
    assert text.endswith("\n") and text.count("\n") == 1  # rewritten in place, ended once
    assert _final(text) == {"label": "figures", "done": "4", "total": "4", "unit": "figures",
                            "pct": "100"}
    log = io.StringIO()
    with prog.Progress("x", 2, "steps", progress=True, stream=log, interval=0.0) as bar:
        bar.update(2)
    assert log.getvalue().splitlines() == [
        line for line in log.getvalue().splitlines() if LINE.fullmatch(line)]
    assert "\r" not in log.getvalue()


def test_auto_progress_is_silent_off_a_terminal_and_for_quick_work():
    quiet = io.StringIO()
    with prog.Progress("x", 3, progress=None, stream=quiet, interval=0.0) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""
    # On a terminal, "auto" waits a second before it writes: quick work stays silent.
    tty = _Tty()
    with prog.Progress("x", 3, progress=None, stream=tty, interval=0.0) as bar:
        bar.update(3)
    assert tty.getvalue() == ""


def _graph():
    parts = [dask.delayed(np.ones)(10) * i for i in range(5)]
    return dask.delayed(sum)(parts)


def test_compute_counts_tasks_on_the_local_scheduler(capsys):
    (total,) = prog.compute(_graph(), label="sum", progress=True)
    assert total.sum() == 100.0
    err = capsys.readouterr().err
    final = _final(err)
    assert final["label"] == "sum" and final["done"] == final["total"] != "0"
    (total,) = prog.compute(_graph(), label="sum", progress=False)
    assert total.sum() == 100.0 and capsys.readouterr().err == ""


def test_compute_counts_tasks_under_a_distributed_client(capsys):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster):
        (total,) = prog.compute(_graph(), label="sum", progress=True)
    assert total.sum() == 100.0
    final = _final(capsys.readouterr().err)
    assert final["label"] == "sum" and final["done"] == final["total"]
    assert int(final["total"]) >= 6  # five products and their sum, counted by the scheduler


def test_montecarlo_correction_shows_its_batches(capsys, pain_dataset):
    from daskmeta.correct import FWECorrector
    from daskmeta.estimators import MKDADensity

    res = MKDADensity().fit(pain_dataset)
    capsys.readouterr()
    FWECorrector("montecarlo", n_iters=20, batch_size=5, seed=0, vfwe_only=True,
                 progress=True).transform(res)
    final = _final(capsys.readouterr().err)
    assert final == {"label": "Monte Carlo", "done": "4", "total": "4", "unit": "batches",
                     "pct": "100"}
    FWECorrector("montecarlo", n_iters=20, batch_size=5, seed=0, vfwe_only=True,
                 progress=None).transform(res)
    assert capsys.readouterr().err == ""  # not a terminal, not asked


def test_ingest_and_fit_many_show_progress(capsys, pain_dataset, tmp_path):
    from daskmeta import Collection
    from daskmeta.estimators import MKDADensity
    from daskmeta.kernels import MKDAKernel

    coll = Collection.build(pain_dataset, MKDAKernel(), tmp_path / "s.zarr", rows_per_shard=8,
                            progress=True)
    final = _final(capsys.readouterr().err)
    assert final["label"] == "ingest s.zarr" and final["done"] == final["total"]
    assert int(final["total"]) >= 3  # a task per shard of 8 rows
    ids = list(pain_dataset.experiments["id"])
    selections = {f"s{i}": ids[i:i + 10] for i in range(3)}
    MKDADensity().fit_many(coll, selections, group_size=1, progress=True)
    lines = [m.groupdict() for m in LINE.finditer(capsys.readouterr().err)]
    # Not a terminal: a line per update at most every half second, and the last one.
    assert lines[-1] == {"label": "fit_many", "done": "3", "total": "3",
                         "unit": "selections", "pct": "100"}
    assert all(x["label"] == "fit_many" and x["total"] == "3" for x in lines)


def test_command_line_progress_option(tmp_path, capsys):
    from conftest import PAIN_JSON

    from daskmeta.cli import main

    store = tmp_path / "k.zarr"
    assert main(["--progress", "ingest", str(PAIN_JSON), "--kernel", "kda",
                 "--store", str(store)]) == 0
    assert _final(capsys.readouterr().err)["label"] == "ingest k.zarr"
    assert main(["ingest", str(PAIN_JSON), "--kernel", "kda", "--store",
                 str(tmp_path / "q.zarr")]) == 0
    assert "[daskmeta] ingest" not in capsys.readouterr().err  # not a terminal, not asked
