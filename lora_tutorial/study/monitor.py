"""What the study measures around a training run: peak memory and the machine's load while it trains."""

from __future__ import annotations

import os
import threading

import psutil
import torch


class ResourceMonitor:
    """Peak memory while the block runs (CUDA max allocated, or on CPU the process's peak RSS, sampled)
    and the machine's mean 1-minute load average over the block (other work on the machine raises it)."""

    def __init__(self, device: torch.device, every: float = 0.05) -> None:
        self.device, self.every, self.peak, self.loads = device, every, 0, []

    @property
    def mean_load(self) -> float:
        return sum(self.loads) / len(self.loads) if self.loads else os.getloadavg()[0]

    def __enter__(self) -> ResourceMonitor:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        process, ticks = psutil.Process(), 0
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, process.memory_info().rss)
            ticks += 1
            if ticks % 100 == 0:  # every 5 s
                self.loads.append(os.getloadavg()[0])

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
