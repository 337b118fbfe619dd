"""Efficiency benchmarks: where training time and memory go for full fine-tuning, LoRA, the
backprop floor and head-only training; our LoRA against peft's; merged vs unmerged inference.

Every ratio is measured in one process on the same batch, variants interleaved, warm-up excluded,
as the median of the pairwise ratios of repeats.
"""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from .adapter_io import copy_to_peft
from .lora import LoRAConfig, apply_lora, lora_layers, merge_lora, train_only
from .memory import training_state_bytes
from .models import load_model

VARIANTS = ("full", "lora", "lora_nodropout", "peft", "floor", "head_only", "lora_upper")


def make_variant(base: nn.Module, variant: str, r: int = 16, dropout: float = 0.1) -> nn.Module:
    """A copy of ``base`` set up for one training variant (classifier trainable in all of them)."""
    model = copy.deepcopy(base).train()
    layers = model.config.num_hidden_layers
    if variant == "full":
        return model.requires_grad_(True)
    if variant == "peft":
        from peft import LoraConfig, get_peft_model
        return get_peft_model(model, LoraConfig(**LoRAConfig(r=r, alpha=2 * r, dropout=dropout).to_peft()))
    if variant in ("lora", "lora_nodropout", "lora_upper"):
        apply_lora(model, LoRAConfig(r=r, alpha=2 * r, dropout=0.0 if variant == "lora_nodropout" else dropout,
                                     layers=list(range(layers // 2, layers)) if variant == "lora_upper" else None))
        return model
    train_only(model, ("classifier",))
    if variant == "floor":  # frozen, but the gradient still flows back through every layer to the embeddings
        model.get_input_embeddings().register_forward_hook(lambda module, inputs, out: out.requires_grad_(True))
    elif variant != "head_only":
        raise ValueError(f"Unknown variant {variant!r}; choose one of {VARIANTS}.")
    return model


def make_batch(batch_size: int = 32, seq_len: int = 16, vocab: int = 30522, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1000, vocab, (batch_size, seq_len), generator=g),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch_size,), generator=g)}


def step_fn(model: nn.Module, batch: dict) -> Callable[[], None]:
    """One training step (forward, backward, AdamW step), as a closure to time."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def interleaved_times(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
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


def peak_rss_of_training(model_name: str, variant: str, steps: int = 3) -> int:
    """Peak resident memory of training, in bytes above the bare interpreter: measured in a fresh
    process (so variants cannot inherit each other's peaks), with the kernel's peak counter reset
    after the model is loaded (so loading's transient peak does not count)."""
    code = f"""
import gc, psutil, torch
from lora_tutorial import bench
rss0 = psutil.Process().memory_info().rss
base = bench.load_model({model_name!r})
model = bench.make_variant(base, {variant!r})
del base
gc.collect()
step = bench.step_fn(model, bench.make_batch())
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM, the peak RSS
for _ in range({steps}):
    step()
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(hwm * 1024 - rss0)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def op_profile(model: nn.Module, batch: dict, steps: int = 3, top: int = 12) -> dict[str, float]:
    """Self CPU time per training step (ms) of the most expensive operators, from ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile
    step = step_fn(model, batch)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {e.key: e.self_cpu_time_total / 1e3 / steps for e in ops}


def logits_gap_to_peft(base: nn.Module, batch: dict, r: int = 16) -> float:
    """Max |logit difference| between our LoRA and peft's with the same A, B and head, in eval mode."""
    ours, theirs = make_variant(base, "lora", r), make_variant(base, "peft", r)
    with torch.no_grad():
        for layer in lora_layers(ours).values():
            layer.lora_B.normal_(std=0.02)
        copy_to_peft(ours, theirs)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return (ours.eval()(**inputs).logits - theirs.eval()(**inputs).logits).abs().max().item()


def inference_times(base: nn.Module, batch: dict, repeats: int) -> dict[str, list[float]]:
    """Forward-pass times (eval, no grad) of the base model, unmerged LoRA and merged LoRA."""
    unmerged = make_variant(base, "lora").eval()
    with torch.no_grad():
        for layer in lora_layers(unmerged).values():
            layer.lora_B.normal_(std=0.02)
    merged = merge_lora(copy.deepcopy(unmerged))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    models = {"base": base.eval(), "unmerged": unmerged, "merged": merged}
    with torch.no_grad():
        return interleaved_times({k: (lambda m=m: m(**inputs)) for k, m in models.items()}, repeats)


def run_benchmark(model_name: str, repeats: int = 10, batch_size: int = 32, seq_len: int = 16) -> dict:
    """All measurements for one model; returns the record that ``bench`` writes to JSON."""
    from .runner import environment
    torch.manual_seed(0)
    base = load_model(model_name)
    batch = make_batch(batch_size, seq_len)
    models = {v: make_variant(base, v) for v in VARIANTS}
    step = interleaved_times({v: step_fn(m, batch) for v, m in models.items()}, repeats)
    infer = inference_times(base, batch, repeats)
    state = {v: training_state_bytes(make_variant(base, v), batch) for v in ("full", "lora")}
    peak = {v: peak_rss_of_training(model_name, v) for v in ("full", "lora")}
    ratios = {
        "lora_over_full_step": median_ratio(step, "lora", "full"),
        "lora_over_floor_step": median_ratio(step, "lora", "floor"),
        "lora_nodropout_over_floor_step": median_ratio(step, "lora_nodropout", "floor"),
        "lora_over_head_only_step": median_ratio(step, "lora", "head_only"),
        "ours_over_peft_step": median_ratio(step, "lora", "peft"),
        "floor_over_full_step": median_ratio(step, "floor", "full"),
        "lora_upper_over_lora_step": median_ratio(step, "lora_upper", "lora"),
        "merged_over_base_latency": median_ratio(infer, "merged", "base"),
        "unmerged_over_base_latency": median_ratio(infer, "unmerged", "base"),
        "lora_over_full_peak_memory": peak["lora"] / peak["full"],
        "lora_over_full_optimizer_state": state["lora"]["optimizer state"] / state["full"]["optimizer state"],
    }
    return {"model": model_name, "batch": {"batch_size": batch_size, "seq_len": seq_len}, "repeats": repeats,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.1, "target_modules": ["query", "value"]},
            "ratios": ratios, "goals": goal_report(ratios, model_name),
            "step_ms_median": {k: 1e3 * statistics.median(v) for k, v in step.items()},
            "inference_ms_median": {k: 1e3 * statistics.median(v) for k, v in infer.items()},
            "step_seconds": step, "inference_seconds": infer,
            "training_state_bytes": state, "peak_training_rss_bytes": peak,
            "op_profile_ms_per_step": {v: op_profile(models[v], batch) for v in ("full", "lora", "floor", "peft")},
            "logits_gap_to_peft": logits_gap_to_peft(base, batch),
            **environment(), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def goals(model: str) -> dict[str, float]:
    """The targets (upper bounds) for the ratios."""
    return {"lora_over_full_step": 0.55 if model == "minilm" else 0.50, "lora_over_floor_step": 1.10,
            "lora_nodropout_over_floor_step": 1.05, "ours_over_peft_step": 0.90,
            "merged_over_base_latency": 1.01, "lora_over_full_peak_memory": 0.70}


def goal_report(ratios: dict[str, float], model: str) -> dict[str, dict]:
    """Each goal with the measured ratio, whether it is met, and by how much it is missed."""
    return {key: {"goal": goal, "measured": ratios[key], "met": ratios[key] <= goal,
                  "missed_by": max(0.0, ratios[key] - goal)} for key, goal in goals(model).items()}


def padding_benchmark(model_name: str = "minilm", batch_size: int = 32, batches: int = 24,
                      data_source: str | None = None) -> dict:
    """Padding in SST-2 training batches, random vs length-grouped, and its effect on epoch time:
    LoRA training steps on the first ``batches`` batches of each scheme, interleaved. An epoch has
    the same number of batches either way, so the ratio of mean step times is the epoch-time ratio."""
    from transformers import DataCollatorWithPadding

    from .data import LengthGroupedBatches, load_sst2, padding_fraction, random_batches, tokenize
    from .models import load_tokenizer
    from .runner import environment
    tokenizer = load_tokenizer(model_name)
    train = tokenize(load_sst2(data_source), tokenizer)["train"]
    lengths = train["length"]
    schemes = {"random": random_batches(len(lengths), batch_size),
               "grouped": list(LengthGroupedBatches(lengths, batch_size))}
    collate = DataCollatorWithPadding(tokenizer)
    columns = train.remove_columns("length").rename_column("label", "labels")
    model = make_variant(load_model(model_name), "lora")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times: dict[str, list[float]] = {k: [] for k in schemes}
    for i in range(batches + 2):
        for name, scheme in schemes.items():
            batch = collate([columns[j] for j in scheme[i]])
            start = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= 2:  # warm-up excluded
                times[name].append(time.perf_counter() - start)
    fractions = {k: padding_fraction(lengths, iter(v)) for k, v in schemes.items()}
    return {"model": model_name, "batch_size": batch_size, "batches_timed": batches,
            "padding_fraction": fractions,
            "ratios": {"grouped_over_random_epoch_time": statistics.mean(times["grouped"]) / statistics.mean(times["random"]),
                       "grouped_over_random_tokens": (1 - fractions["random"]) / (1 - fractions["grouped"])},
            "step_seconds": times, **environment(),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main(models: list[str], repeats: int, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for name in models:
        record = run_benchmark(name, repeats)
        (out / f"{name}.json").write_text(json.dumps(record, indent=1))
        records.append(record)
        for key, g in record["goals"].items():
            status = "met" if g["met"] else f"MISSED by {g['missed_by']:.3f}"
            print(f"{name:>18} {key:<32} {g['measured']:.3f} (goal <= {g['goal']:.2f}) {status}")
    return records

