"""Peak resident memory of a process and its descendants, sampled in a thread, cheaply.

Listing a process's descendants scans every process of the machine (psutil reads each
``/proc/<pid>/stat``): ~2 ms of CPU. Listed at every sample (every 20-50 ms), that took 4-9%
of a core from the 2-core machine the measured program runs on, and cost the 2-core runs of
both programs (daskmeta's and NiMARE's) ~2% of their speed. Here the tree is listed every
``refresh`` seconds (1 s), and the resident memory of the processes known is read (one small
``/proc`` file each) every ``interval`` seconds (0.1 s): 0.7% of a core.
"""

from __future__ import annotations

import threading
import time


class TreePeak:
    """Sample the summed RSS of process ``pid`` and its descendants until :meth:`stop`.

    Attributes
    ----------
    tree : int
        Peak of the summed RSS (bytes).
    one : int
        Peak RSS of any single descendant (bytes; 0 without descendants).
    """

    def __init__(self, pid: int, interval: float = 0.1, refresh: float = 1.0):
        import psutil

        self._psutil = psutil
        self._interval, self._refresh = interval, refresh
        self.tree = 0
        self.one = 0
        self._stop = threading.Event()
        try:
            self._root = psutil.Process(pid)
        except psutil.Error:
            self._root = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _children(self) -> list:
        try:
            return self._root.children(recursive=True)
        except self._psutil.Error:
            return []

    def _run(self) -> None:
        if self._root is None:
            return
        children = self._children()
        listed = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - listed >= self._refresh:
                children = self._children()
                listed = time.monotonic()
            sizes = []
            for p in (self._root, *children):
                try:
                    sizes.append(p.memory_info().rss)
                except self._psutil.Error:
                    sizes.append(0)
            self.tree = max(self.tree, sum(sizes))
            self.one = max(self.one, max(sizes[1:], default=0))
            self._stop.wait(self._interval)

    def stop(self) -> TreePeak:
        self._stop.set()
        self._thread.join()
        return self
