"""Ingest bench bookkeeping: one timed upload (`timed`) and the figures kept per row."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from dataclasses import dataclass, field

import psutil

from bench.common import GIB, Rates, Timing, median_or_none, reset_hwm, tree_cpu, vm_hwm


class Watch:
    """Server-side figures for one measurement: peak RSS (VmHWM and 50 ms psutil samples), CPU."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self.sampled_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(self.pid).memory_info().rss
                self.sampled_peak = max(self.sampled_peak, rss)
            self._stop.wait(0.05)

    def __enter__(self):
        if self.pid is None:
            return self
        reset_hwm(self.pid)  # VmHWM back to the current RSS: a per-measurement peak
        self.cpu0 = tree_cpu(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.pid is None:
            return False
        self._stop.set()
        self._thread.join()
        self.cpu = tree_cpu(self.pid) - self.cpu0
        self.hwm = vm_hwm(self.pid)
        return False


@dataclass
class Sample(Timing):
    """One upload (or write) of the ingest bench, with server and client figures."""

    server_cpu: float | None = None
    client_cpu: float | None = None
    hwm: int | None = None
    sampled_peak: int | None = None


@dataclass
class Measurement(Rates):
    """One row of the ingest table: its samples over the rounds."""

    key: str
    label: str
    means: str
    group: str
    samples: list[Sample] = field(default_factory=list)

    def cpu_per_gib(self) -> float | None:
        """Median server CPU seconds per GiB."""
        return median_or_none(
            [s.server_cpu / (s.nbytes / GIB) for s in self.samples if s.server_cpu is not None]
        )

    def client_cpu_per_gib(self) -> float | None:
        """Median client (bench process) CPU seconds per GiB."""
        return median_or_none(
            [s.client_cpu / (s.nbytes / GIB) for s in self.samples if s.client_cpu is not None]
        )

    def peak_rss(self) -> int | None:
        """The highest server RSS seen in any sample (VmHWM or sampled), None if unknown."""
        values = [max(s.hwm or 0, s.sampled_peak or 0) for s in self.samples]
        return max(values) if any(values) else None


def timed(pid: int | None, body) -> Sample:
    """Run `body()` (which returns the bytes it moved) under a Watch of server `pid`."""
    os.sync()  # start clean: no dirty pages of an earlier measurement flushing into this one
    client0 = resource.getrusage(resource.RUSAGE_SELF)
    with Watch(pid) as watch:
        start = time.perf_counter()
        nbytes = body()
        seconds = time.perf_counter() - start
    client1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (client1.ru_utime - client0.ru_utime) + (client1.ru_stime - client0.ru_stime)
    if pid is None:
        return Sample(seconds, nbytes, client_cpu=client_cpu)
    return Sample(seconds, nbytes, watch.cpu, client_cpu, watch.hwm, watch.sampled_peak)
