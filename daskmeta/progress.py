"""Progress of long operations, one line on standard error.

Every long operation of daskmeta (collection builds, fits from a store, Monte Carlo
corrections, ``fit_many``, report figures) reports through :class:`Progress`, under any
scheduler: the steps it counts are its own (tasks, batches, groups, figures), so the same
line shows under the local threaded scheduler and under a ``distributed.Client``.

Whether a line is shown is decided by :func:`enabled`: ``progress=True`` or ``False`` as
given; ``None`` (the default everywhere) reads the Dask config setting
``daskmeta.progress`` (environment variable ``DASK_DASKMETA__PROGRESS``), and when that is
unset or ``"auto"``, shows progress only when standard error is a terminal. So scripts,
pipes, log files and tests stay silent unless asked.

The line reads ``[daskmeta] LABEL: DONE/TOTAL UNIT (PERCENT, ELAPSED s)``, rewritten in place
(``\\r``) at most every ``interval`` seconds on a terminal, and ended by a newline when the
operation finishes. On a stream that is not a terminal (a log file), a line is written at
most every ``interval`` seconds and at the end, each on its own line.
"""

from __future__ import annotations

import sys
import time

import dask
from dask.callbacks import Callback

__all__ = ["Progress", "enabled", "compute", "track"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _configured() -> bool | None:
    """The Dask config ``daskmeta.progress``: True, False, or None for ``"auto"``."""
    value = dask.config.get("daskmeta.progress", "auto")
    if isinstance(value, str):
        low = value.strip().lower()
        value = True if low in _TRUE else False if low in _FALSE else low
    if value is True or value is False:
        return value
    if value not in ("auto", None):
        from daskmeta.exceptions import DaskmetaError

        raise DaskmetaError(f"dask config daskmeta.progress={value!r} must be true, false or "
                            "'auto'")
    return None


def enabled(progress=None, stream=None) -> bool:
    """Whether to show progress.

    Parameters
    ----------
    progress : bool or None
        True or False as given; None reads the Dask config ``daskmeta.progress`` (True,
        False or ``"auto"``; default ``"auto"``): ``"auto"`` shows progress only when
        ``stream`` (default: standard error) is a terminal.
    stream : file-like, optional

    Raises
    ------
    DaskmetaError
        For a config value that is none of those.
    """
    if progress is not None:
        return bool(progress)
    value = _configured()
    if value is not None:
        return value
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """A progress line for ``total`` steps of an operation.

    Parameters
    ----------
    label : str
        What runs (``"Monte Carlo"``, ``"ingest ns.zarr"``, ...).
    total : int
        Steps to do.
    unit : str
        What a step is (``"batches"``, ``"tasks"``, ...).
    progress : bool or None
        See :func:`enabled`.
    stream : file-like, optional
        Default: standard error (looked up when the line is written).
    interval : float
        Least seconds between two writes.
    minimum : float, optional
        Nothing is written before the operation has run this long (so quick operations
        stay quiet); default 0 when progress was asked for (``progress=True``), else 1 s.

    Examples
    --------
    >>> with Progress("figures", 3, "figures", progress=False) as bar:
    ...     for _ in range(3):
    ...         bar.advance()
    """

    def __init__(self, label: str, total: int, unit: str = "", progress=None, stream=None,
                 interval: float = 0.5, minimum: float | None = None):
        self.label, self.total, self.unit = label, int(total), unit
        self.stream = stream
        self.enabled = enabled(progress, self._stream())
        self.interval = float(interval)
        asked = bool(progress) if progress is not None else bool(_configured())
        self.minimum = (0.0 if asked else 1.0) if minimum is None else float(minimum)
        self._written = False
        self._written_done = None
        self.done = 0
        self.start = time.monotonic()
        self._last = float("-inf")
        self._closed = False

    def _stream(self):
        return sys.stderr if self.stream is None else self.stream

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def text(self) -> str:
        """The line as it reads now."""
        unit = f" {self.unit}" if self.unit else ""
        pct = f"{100 * self.done / self.total:.0f}%, " if self.total else ""
        return (f"[daskmeta] {self.label}: {self.done}/{self.total}{unit} ({pct}"
                f"{time.monotonic() - self.start:.1f} s)")

    def update(self, done: int) -> None:
        """Set the steps done (written if ``interval`` has passed since the last write)."""
        self.done = int(done)
        if not self.enabled or self._closed:
            return
        now = time.monotonic()
        if now - self._last < self.interval or now - self.start < self.minimum:
            return
        self._last = now
        self._write(final=False)

    def advance(self, n: int = 1) -> None:
        """Add ``n`` steps done."""
        self.update(self.done + n)

    def close(self) -> None:
        """Write the final line (once)."""
        if self.enabled and not self._closed and (
                self._written or time.monotonic() - self.start >= self.minimum):
            tty = bool(getattr(self._stream(), "isatty", lambda: False)())
            if tty or self._written_done != self.done:
                self._write(final=True)
        self._closed = True

    def _write(self, final: bool) -> None:
        stream = self._stream()
        tty = bool(getattr(stream, "isatty", lambda: False)())
        if tty:
            stream.write("\r" + self.text() + ("\n" if final else ""))
        else:
            stream.write(self.text() + "\n")
        stream.flush()
        self._written, self._written_done = True, self.done


class _Callback(Callback):
    """Counts the tasks of a computation on Dask's local schedulers."""

    def __init__(self, bar: Progress):
        super().__init__()
        self.bar = bar

    def _start_state(self, dsk, state):
        self.bar.total = sum(len(state[k]) for k in ("ready", "waiting", "running",
                                                       "finished"))
        self.bar.update(len(state["finished"]))

    def _posttask(self, key, result, dsk, state, worker_id):
        self.bar.update(len(state["finished"]))


def track(futures, label: str, unit: str = "tasks", progress=None):
    """Wait for ``futures`` of a ``distributed.Client``, with a progress line of every task
    they depend on (counted by the scheduler, as :func:`distributed.progress` does).

    Returns the futures (done; one that failed raises on ``result()``).
    """
    futures = list(futures)
    if not futures:
        return futures
    if not enabled(progress):
        from distributed import wait

        wait(futures)
        return futures
    from distributed.diagnostics.progressbar import TextProgressBar

    bar = Progress(label, 0, unit, progress)

    class _Bar(TextProgressBar):
        def _draw_bar(self, remaining, all, **kwargs):
            bar.total = all
            bar.update(all - remaining)

        def _draw_stop(self, **kwargs):
            bar.close()

    _Bar(futures, interval="200ms", complete=True)
    bar.close()
    return futures


def compute(*collections, label: str, progress=None, unit: str = "tasks"):
    """:func:`daskmeta.cluster.compute` with a progress line of the tasks done.

    Every task of the graph is counted, under a distributed Client (by the scheduler) and
    under Dask's local schedulers (by a callback).
    """
    from daskmeta.cluster import compute as run
    from daskmeta.cluster import scheduler_client

    if not enabled(progress):
        return run(*collections)
    client = scheduler_client()
    if client is not None:
        futures = client.compute(list(collections))
        track(futures, label, unit, progress)
        return tuple(client.gather(futures))
    bar = Progress(label, 0, unit, progress)
    with _Callback(bar):
        out = run(*collections)
    bar.close()
    return out
