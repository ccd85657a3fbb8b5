"""Where figures are drawn: here, or in a second process that works while this one does.

An analysis command draws its figures (glass brains, slices, the viewer, null histograms)
after its Monte Carlo, single-threaded, with the other cores idle, and first imports nilearn's
plotting and loads the MNI template, another second. :class:`FigureProcess` starts a Python
process early, which does those imports while this one fits and corrects, then draws the
figures this one asks for while it writes maps and cluster tables. Both run the same
functions (:mod:`daskmeta.reports._figures`) on the same images, so the figures are the same
bytes as :class:`FigureDrawer`'s, which draws in this process when a result is asked for.

The child runs ``python -c`` and loads this file and ``_figures.py`` by their paths, not
through the package: it imports neither daskmeta nor numba (only numpy, nibabel, matplotlib
and nilearn), so this file and ``_figures.py`` import nothing from daskmeta at module level.
Requests and answers travel on the child's standard input and output: a JSON header line,
then the bytes it announces (images as NIfTI, arrays as ``.npy`` without pickle).

Whatever goes wrong with the child (it cannot start, dies, hangs, answers what cannot be
read, or the drawing raises) the figure is drawn again in this process, as without a child:
the same figure, or the drawing's own exception with its traceback.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["FigureDrawer", "FigureProcess", "figure_drawer"]

_HERE = Path(__file__).resolve().parent
#: The child's program: load this file by path (not through the package) and serve.
#: Answers go to a copy of its standard output, which itself then points at standard error:
#: whatever a library prints cannot mix with the answers.
_BOOT = ("import importlib.util, os, sys\n"
         "answers = os.fdopen(os.dup(1), 'wb')\n"
         "os.dup2(2, 1)\n"
         "sys.stdout = sys.stderr\n"
         "sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
         "spec = importlib.util.spec_from_file_location('_daskmeta_render', sys.argv[1])\n"
         "module = importlib.util.module_from_spec(spec)\n"
         "spec.loader.exec_module(module)\n"
         "module.serve(sys.stdin.buffer, answers)\n")
#: Seconds to wait for one figure from the child before drawing it here instead.
_TIMEOUT = 300.0


def _drawing():
    """The drawing module: the package's when imported through it, else loaded by path."""
    if __name__ == "daskmeta.reports._render":
        from daskmeta.reports import _figures

        return _figures
    name = "_daskmeta_figures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _HERE / "_figures.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


class _Pending:
    """A figure asked for: :meth:`result` gives its PNG bytes (or HTML text)."""

    def __init__(self, name: str, kwargs: dict, future=None, owner=None):
        self._name, self._kwargs = name, kwargs
        self._future, self._owner = future, owner
        self._value = None
        self._done = False

    def result(self, steal: bool = False):
        """The figure: the child's (its warnings issued here), else drawn here, in the
        calling thread; with ``steal``, drawn here too if the child has not started it (for
        figures cheap to draw here: the caller would only wait)."""
        if not self._done:
            answer = None
            if self._future is not None and steal and self._future.cancel():
                pass  # drawn here
            elif self._future is not None:
                try:
                    answer = self._future.result(timeout=_TIMEOUT)
                except TimeoutError:
                    self._owner.close()  # a hung child: every later figure is drawn here
                except Exception:  # noqa: BLE001 - any failure of the child: draw here
                    answer = None
            if answer is None:
                value = getattr(_drawing(), self._name)(**self._kwargs)
            else:
                value, caught = answer
                for category, message in caught:
                    warnings.warn(message, _category(category), stacklevel=2)
            self._value, self._done = value, True
            self._kwargs = self._future = self._owner = None
        return self._value


class FigureDrawer:
    """Draws figures in this process, when their :meth:`_Pending.result` is asked for.

    ``submit(name, **kwargs)`` names a drawing function of :mod:`daskmeta.reports._figures`
    and its arguments (nibabel images, arrays, numbers, strings, None).
    """

    def submit(self, name: str, **kwargs) -> _Pending:
        """Ask for a figure; returns an object whose ``result()`` is the figure."""
        _check_name(name)
        return _Pending(name, kwargs)

    def close(self) -> None:
        """Nothing to release (see :meth:`FigureProcess.close`)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FigureProcess(FigureDrawer):
    """Draws figures in a second Python process, started now so that it has imported nilearn's
    plotting and loaded the MNI template by the time a figure is asked for.

    Figures are drawn one after the other, in the order asked, while this process goes on;
    :meth:`close` ends the child at once. Used as a context manager, as the analysis commands
    do, so that the child never outlives the run (it also exits when its input closes).
    """

    def __init__(self):
        env = dict(os.environ, MPLBACKEND="Agg")
        self._proc = None
        try:
            if not sys.executable:  # an embedded interpreter: nothing to start
                raise OSError("no Python executable")
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(_HERE / "_render.py")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=env)
        except OSError:
            self._proc = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="daskmeta-figures")
        self._broken = self._proc is None

    def submit(self, name: str, **kwargs) -> _Pending:
        _check_name(name)
        if self._broken:
            return _Pending(name, kwargs)
        try:
            header, blobs = _encode(name, kwargs)
        except TypeError:  # an argument the protocol does not carry: draw it here
            return _Pending(name, kwargs)
        return _Pending(name, kwargs, self._pool.submit(self._round_trip, header, blobs), self)

    def _round_trip(self, header: bytes, blobs: list[bytes]):
        """Send one request and read its answer (in the pool's one thread): the figure and
        the warnings the child caught drawing it, or None when it must be drawn here."""
        proc = self._proc
        if self._broken or proc is None:
            return None
        try:
            stdin, stdout = proc.stdin, proc.stdout
            stdin.write(header)
            for blob in blobs:
                stdin.write(blob)
            stdin.flush()
            answer = json.loads(stdout.readline() or b"null")
            if not isinstance(answer, dict) or not answer.get("ok"):
                if not isinstance(answer, dict):  # the child is gone or talks nonsense
                    self._broken = True
                return None
            payload = stdout.read(int(answer["n"]))
            if len(payload) != int(answer["n"]):
                self._broken = True
                return None
        except (OSError, ValueError, KeyError, TypeError):
            self._broken = True
            return None
        value = payload.decode("utf-8") if answer.get("type") == "str" else payload
        return value, [tuple(w) for w in answer.get("warnings", ())]

    def close(self) -> None:
        """End the child (at once: figures not collected by now are not needed)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        proc, self._proc, self._broken = self._proc, None, True
        if proc is None:
            return
        proc.kill()  # first: a write blocked on a busy child fails rather than waits
        proc.wait()
        self._pool.shutdown(wait=True)  # its thread sees the end of the child's output
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:  # unflushed bytes for the dead child
                pass


def figure_drawer(needed: bool = True) -> FigureDrawer:
    """Where a run's figures are drawn: a :class:`FigureProcess`, started now, when the run
    will draw figures (``needed``) and the dask config setting ``daskmeta.figure-process`` is
    true (the default); else a :class:`FigureDrawer` (this process).

    Raises
    ------
    DaskmetaError
        If ``daskmeta.figure-process`` is not true or false.
    """
    from daskmeta import config
    from daskmeta.exceptions import DaskmetaError

    setting = config.get("figure-process")
    if not isinstance(setting, bool):
        raise DaskmetaError(f"the dask config setting daskmeta.figure-process must be true or "
                            f"false; got {setting!r}")
    return FigureProcess() if needed and setting else FigureDrawer()


def _check_name(name: str) -> None:
    if name not in _drawing().DRAWING:
        raise ValueError(f"no figure function {name!r}")


def _category(name: str) -> type[Warning]:
    """The built-in warning category of that name (UserWarning for any other)."""
    import builtins

    category = getattr(builtins, name, None)
    return (category if isinstance(category, type) and issubclass(category, Warning)
            else UserWarning)


def _encode(name: str, kwargs: dict) -> tuple[bytes, list[bytes]]:
    """The request for ``name(**kwargs)``: its header line and the blobs that follow."""
    import nibabel as nib

    spec, blobs = {}, []
    for key, value in kwargs.items():
        if isinstance(value, nib.Nifti1Image):
            blob = value.to_bytes()
            spec[key] = {"nii": len(blob)}
        elif isinstance(value, np.ndarray):
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            blob = buf.getvalue()
            spec[key] = {"npy": len(blob)}
        elif value is None or isinstance(value, bool | int | float | str):
            spec[key] = {"value": value}
            continue
        elif isinstance(value, np.generic):
            spec[key] = {"value": value.item()}
            continue
        else:
            raise TypeError(f"cannot send a {type(value).__name__}")
        blobs.append(blob)
    return (json.dumps({"name": name, "kwargs": spec}) + "\n").encode("utf-8"), blobs


def _decode(header: dict, stream) -> tuple[str, dict]:
    """A request read back: the function name and its arguments."""
    import nibabel as nib

    kwargs = {}
    for key, spec in header["kwargs"].items():
        if "value" in spec:
            kwargs[key] = spec["value"]
        elif "nii" in spec:
            kwargs[key] = nib.Nifti1Image.from_bytes(stream.read(spec["nii"]))
        else:
            kwargs[key] = np.load(io.BytesIO(stream.read(spec["npy"])), allow_pickle=False)
    return header["name"], kwargs


def serve(stdin, stdout) -> None:
    """The child's loop: get ready, then answer each request until standard input closes."""
    import gc

    # Importing nilearn's plotting creates ~1M objects for good: collecting while they are
    # made only costs time, and they need not be scanned afterwards.
    gc.disable()
    try:
        drawing = _drawing()
        drawing.warm()
    except Exception:  # noqa: BLE001 - the first figure will fail and be drawn by the parent
        drawing = _drawing()
    finally:
        gc.enable()
        gc.freeze()
    while True:
        line = stdin.readline()
        if not line:
            return
        try:
            name, kwargs = _decode(json.loads(line), stdin)
        except Exception:  # noqa: BLE001 - out of step with the parent: stop (it draws)
            return
        try:
            if name not in drawing.DRAWING:
                raise ValueError(f"no figure function {name!r}")
            with warnings.catch_warnings(record=True) as caught:
                value = getattr(drawing, name)(**kwargs)
            kind = "str" if isinstance(value, str) else "bytes"
            payload = value.encode("utf-8") if kind == "str" else bytes(value)
            answer = {"ok": True, "type": kind, "n": len(payload),
                      "warnings": [[w.category.__name__, str(w.message)] for w in caught]}
        except Exception as exc:  # noqa: BLE001 - the parent draws it again and raises
            payload, answer = b"", {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        stdout.write((json.dumps(answer) + "\n").encode("utf-8"))
        stdout.write(payload)
        stdout.flush()
