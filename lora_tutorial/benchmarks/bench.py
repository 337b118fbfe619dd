"""The study's efficiency benchmarks: where training time and memory go for full fine-tuning, LoRA, the
backprop floor and head-only training; our LoRA against peft's; merged vs unmerged inference.

The LoRA timed is the study's (``lora-r16`` of the cpu profile: r = 16 on query and value, its dropout).
Every ratio is measured in one process on the same batch, variants interleaved, warm-up excluded,
as the median of the pairwise ratios of repeats (see :mod:`lora_tutorial.benchmarks.harness`).
"""

from __future__ import annotations

import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import psutil
import torch
from torch import nn

from ..adapter_io import copy_to_peft
from ..errors import UsageError
from ..lora import LoRAConfig, apply_lora, lora_layers, merge_lora, train_only
from ..models import load_model
from ..provenance import Provenance, now
from ..study.experiments import HEAD, PROFILES, Experiment
from .harness import interleaved_times, median_ratio, op_profile, peak_rss_during, step_fn
from .memory import training_state_bytes

VARIANTS = ("full", "lora", "lora_nodropout", "peft", "floor", "head_only", "lora_upper")
LORA = {"lora": "lora-r16", "lora_nodropout": "lora-r16", "peft": "lora-r16", "lora_upper": "lora-r16-upper"}


def lora_config(variant: str, num_layers: int) -> LoRAConfig:
    """The LoRA of a bench variant, from the study's experiment specs (cpu profile's dropout)."""
    config = Experiment.parse(LORA[variant]).lora_config(num_layers, PROFILES["cpu"].lora_dropout)
    return replace(config, dropout=0.0) if variant == "lora_nodropout" else config


def make_variant(base: nn.Module, variant: str) -> nn.Module:
    """A copy of ``base`` set up for one training variant (the head trainable in all of them)."""
    model = copy.deepcopy(base).train()
    if variant == "full":
        return model.requires_grad_(True)
    if variant == "peft":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(
            model, LoraConfig(**lora_config(variant, model.config.num_hidden_layers).to_peft())
        )
    if variant in LORA:
        apply_lora(model, lora_config(variant, model.config.num_hidden_layers))
        return model
    train_only(model, HEAD)
    if variant == "floor":  # frozen, but the gradient still flows back through every layer to the embeddings
        model.get_input_embeddings().register_forward_hook(
            lambda module, inputs, out: out.requires_grad_(True)
        )
    elif variant != "head_only":
        raise UsageError(f"Unknown variant {variant!r}; choose one of {VARIANTS}.")
    return model


def make_batch(batch_size: int = 32, seq_len: int = 16, vocab: int = 30522, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1000, vocab, (batch_size, seq_len), generator=g),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch_size,), generator=g),
    }


def logits_gap_to_peft(base: nn.Module, batch: dict) -> float:
    """The largest absolute logit difference between our LoRA and peft's with the same A, B and head
    (evaluation mode)."""
    ours, theirs = make_variant(base, "lora"), make_variant(base, "peft")
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


def checkpointed(model: nn.Module) -> nn.Module:
    """Gradient checkpointing on: each layer's activations are recomputed in the backward pass instead of
    kept (the non-reentrant form, which needs no trainable input)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def peak_training_bytes(
    model_name: str, variant: str, steps: int, seq_len: int = 16, checkpointing: bool = False
) -> int:
    """Peak resident memory of ``steps`` training steps of a bench variant on batches of 32 sequences of
    ``seq_len`` tokens, in bytes above this process's memory before the model was built (loading's
    transient peak does not count)."""
    rss0 = psutil.Process().memory_info().rss
    base = load_model(model_name)
    model = make_variant(base, variant)
    if checkpointing:
        checkpointed(model)
    del base
    gc.collect()
    return peak_rss_during(step_fn(model, make_batch(seq_len=seq_len)), steps) - rss0


def peak_rss_of_training(
    model_name: str, variant: str, steps: int = 3, seq_len: int = 16, checkpointing: bool = False
) -> int:
    """:func:`peak_training_bytes` measured in a fresh process (``python -m lora_tutorial.benchmarks.bench
    MODEL VARIANT STEPS SEQ_LEN CHECKPOINTING``), so that variants cannot inherit each other's peaks."""
    command = [
        sys.executable,
        "-m",
        __name__,
        model_name,
        variant,
        str(steps),
        str(seq_len),
        str(int(checkpointing)),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def activation_benchmark(
    model_name: str = "minilm", lengths: tuple[int, ...] = (16, 64, 128), repeats: int = 5
) -> dict:
    """What a training step holds, by sequence length, for full fine-tuning and LoRA: the peak memory of
    three steps (a fresh process each), with and without gradient checkpointing; the weights, gradients
    and AdamW state (which do not depend on the length); and the step-time ratio checkpointing costs,
    measured interleaved in this process."""
    base = load_model(model_name)
    state = {v: training_state_bytes(make_variant(base, v), make_batch()) for v in ("full", "lora")}
    peak, time_ratio = {}, {}
    for n in lengths:
        peak[n] = {
            f"{v}{'_checkpointed' if c else ''}": peak_rss_of_training(
                model_name, v, seq_len=n, checkpointing=c
            )
            for v in ("full", "lora")
            for c in (False, True)
        }
        batch = make_batch(seq_len=n)
        plain, ckpt = make_variant(base, "lora"), checkpointed(make_variant(base, "lora"))
        times = interleaved_times(
            {"plain": step_fn(plain, batch), "checkpointed": step_fn(ckpt, batch)}, repeats
        )
        time_ratio[n] = median_ratio(times, "checkpointed", "plain")
    return {
        "model": model_name,
        "batch_size": 32,
        "sequence_lengths": list(lengths),
        "training_state_bytes": state,
        "peak_training_rss_bytes": peak,
        "lora_checkpointed_over_plain_step": time_ratio,
        "load_average_1min": os.getloadavg()[0],
        **vars(Provenance.here()),
        "finished": now(),
    }


def run_benchmark(model_name: str, repeats: int = 10, batch_size: int = 32, seq_len: int = 16) -> dict:
    """All measurements for one model; returns the record that ``bench`` writes to JSON."""
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
    return {
        "model": model_name,
        "batch": {"batch_size": batch_size, "seq_len": seq_len},
        "repeats": repeats,
        "lora": asdict(lora_config("lora", base.config.num_hidden_layers)),
        "ratios": ratios,
        "step_ms_median": {k: 1e3 * statistics.median(v) for k, v in step.items()},
        "inference_ms_median": {k: 1e3 * statistics.median(v) for k, v in infer.items()},
        "step_seconds": step,
        "inference_seconds": infer,
        "training_state_bytes": state,
        "peak_training_rss_bytes": peak,
        "op_profile_ms_per_step": {
            v: op_profile(models[v], batch) for v in ("full", "lora", "floor", "peft")
        },
        "logits_gap_to_peft": logits_gap_to_peft(base, batch),
        **vars(Provenance.here()),
        "finished": now(),
    }


def padding_benchmark(
    model_name: str = "minilm", batch_size: int = 32, batches: int = 24, data_source: str | None = None
) -> dict:
    """Padding in SST-2 training batches, random vs length-grouped, and its effect on epoch time:
    LoRA training steps on the first ``batches`` batches of each scheme, interleaved. An epoch has
    the same number of batches either way, so the ratio of mean step times is the epoch-time ratio."""
    from transformers import DataCollatorWithPadding

    from ..data import LengthGroupedBatches, load_sst2, padding_fraction, random_batches, tokenize
    from ..models import load_tokenizer

    tokenizer = load_tokenizer(model_name)
    train = tokenize(load_sst2(data_source), tokenizer)["train"]
    lengths = train["length"]
    schemes = {
        "random": random_batches(len(lengths), batch_size),
        "grouped": list(LengthGroupedBatches(lengths, batch_size)),
    }
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
    return {
        "model": model_name,
        "batch_size": batch_size,
        "batches_timed": batches,
        "padding_fraction": fractions,
        "ratios": {
            "grouped_over_random_epoch_time": statistics.mean(times["grouped"])
            / statistics.mean(times["random"]),
            "grouped_over_random_tokens": (1 - fractions["random"]) / (1 - fractions["grouped"]),
        },
        "step_seconds": times,
        **vars(Provenance.here()),
        "finished": now(),
    }


def main(models: list[str], repeats: int, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for name in models:
        record = run_benchmark(name, repeats)
        (out / f"{name}.json").write_text(json.dumps(record, indent=1))
        records.append(record)
        for key, ratio in record["ratios"].items():
            print(f"{name:>18} {key:<32} {ratio:.3f}")
    return records


if __name__ == "__main__":  # the fresh process of peak_rss_of_training
    name, variant, steps, seq_len, checkpointing = sys.argv[1:6]
    print(peak_training_bytes(name, variant, int(steps), int(seq_len), checkpointing == "1"))
