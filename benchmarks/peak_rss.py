"""Peak resident memory of this process while a block runs (shared by the benchmarks)."""
from __future__ import annotations

import threading

import psutil


class PeakRss:
    """Context manager sampling this process's RSS every 10 ms; ``extra_mib`` = peak above the start."""

    def __init__(self):
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.start) / 2**20
