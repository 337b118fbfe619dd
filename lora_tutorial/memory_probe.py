"""Peak memory of a few training steps, measured in its own process:
``python -m lora_tutorial.memory_probe MODEL VARIANT STEPS`` prints the peak resident memory in bytes
above the interpreter with its imports. The kernel's peak counter (VmHWM) is reset after the model is
built, so loading's transient peak does not count. Linux only (``/proc``)."""

from __future__ import annotations

import gc
import sys

import psutil


def peak_training_bytes(model_name: str, variant: str, steps: int) -> int:
    from .bench import make_batch, make_variant
    from .harness import step_fn
    from .models import load_model

    rss0 = psutil.Process().memory_info().rss
    base = load_model(model_name)
    model = make_variant(base, variant)
    del base
    gc.collect()
    step = step_fn(model, make_batch())
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM, the peak RSS
    for _ in range(steps):
        step()
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    return hwm * 1024 - rss0


if __name__ == "__main__":
    model_name, variant, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(peak_training_bytes(model_name, variant, steps))
