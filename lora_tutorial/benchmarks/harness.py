"""A small benchmark harness: interleaved timing, ratios of paired repeats, the peak memory of a function,
and the operator profile of a training step. It knows nothing of LoRA; ``bench`` uses it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def step_fn(model: nn.Module, batch: dict) -> Callable[[], None]:
    """One training step (forward, backward, AdamW step), as a closure to time."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def interleaved_times(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per call of each function, alternating between them so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over repeats of time(a) / time(b), the two measured back to back."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def peak_rss_during(fn: Callable[[], None], calls: int) -> int:
    """This process's peak resident memory (bytes) while ``fn`` is called ``calls`` times: the kernel's peak
    counter (VmHWM) is reset first, so what came before does not count. Linux only (``/proc``); call it in
    a fresh process to measure one thing."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM, the peak RSS
    for _ in range(calls):
        fn()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) * 1024


def op_profile(model: nn.Module, batch: dict, steps: int = 3, top: int = 12) -> dict[str, float]:
    """Self CPU time per training step (ms) of the ``top`` most expensive operators, from
    ``torch.profiler``, and of all the others together (``"other operators"``): the values sum to the
    profiled step."""
    from torch.profiler import ProfilerActivity, profile

    step = step_fn(model, batch)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    ms = {e.key: e.self_cpu_time_total / 1e3 / steps for e in ops}
    return dict(list(ms.items())[:top]) | {"other operators": sum(list(ms.values())[top:])}
