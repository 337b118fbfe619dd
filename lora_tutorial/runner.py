"""Run experiments and record each as one JSON file (written atomically, skipped when present)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import psutil
import torch
from accelerate import Accelerator
from datasets import DatasetDict

from .adapter_io import load_adapter, save_adapter
from .data import load_sst2, tokenize
from .experiments import HEAD, PROFILES, Experiment, Profile, experiment
from .lora import apply_lora, num_layers, train_only
from .models import load_model, load_tokenizer
from .params import count_parameters
from .train import TrainConfig, distributed_state, make_loaders, predict, train

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "peft", "lora-tutorial")


def environment() -> dict:
    """Package versions, machine and git commit: stored with every result."""
    def v(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).parent).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, cwd=Path(__file__).parent).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"versions": {p: v(p) for p in PACKAGES} | {"python": platform.python_version()},
            "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "gpu": gpu},
            "git_commit": commit, "git_dirty": dirty}


def result_path(results: Path, profile: str, name: str, seed: int) -> Path:
    return Path(results) / profile / f"{name}__seed{seed}.json"


def prepare_data(profile: Profile, data_source: str | None = None) -> tuple[DatasetDict, object]:
    """SST-2, cut to the profile's budget and tokenized, with the tokenizer."""
    tokenizer = load_tokenizer(profile.model)
    data = load_sst2(data_source)
    for split, limit in (("train", profile.train_limit), ("validation", profile.eval_limit)):
        if limit is not None and limit < len(data[split]):
            data[split] = data[split].shuffle(seed=0).select(range(limit))
    return tokenize(data, tokenizer, profile.max_length), tokenizer


def build(profile: Profile, exp: Experiment, seed: int):
    """The model for an experiment, with the right parts trainable."""
    model = load_model(profile.model, seed=seed)
    if exp.method == "head":
        train_only(model, HEAD)
    elif exp.method == "lora":
        apply_lora(model, exp.lora_config(num_layers(model), profile.lora_dropout))
    return model


def run_one(profile: Profile, name: str, seed: int, data: DatasetDict, tokenizer, results: Path,
            progress: bool = True) -> dict:
    """Train and evaluate one experiment; write its JSON (and adapter) on the main process."""
    exp = experiment(name)
    if exp.ablation and profile.ablation_train_limit and profile.ablation_train_limit < len(data["train"]):
        data = DatasetDict(train=data["train"].shuffle(seed=0).select(range(profile.ablation_train_limit)),
                           validation=data["validation"])
    started = now()
    env = environment()  # the code as it was when the run started
    baseline = psutil.Process().memory_info().rss  # data loaded, model not yet built
    model = build(profile, exp, seed)
    params = count_parameters(model)
    cfg = TrainConfig(lr=exp.learning_rate(profile), lr_ratio_b=exp.lr_ratio_b, epochs=exp.epochs(profile), batch_size=profile.batch_size, seed=seed, progress=progress)
    lora = getattr(model, "lora_config", None)
    out = train(model, data, tokenizer, cfg)
    record = {
        "config": {"experiment": name, "method": exp.method, "variant": exp.variant if lora else None,
                   "rank": exp.r,
                   "alpha": lora.alpha if lora else None, "layers": lora.layers if lora else None,
                   "target_modules": list(lora.target_modules) if lora else None,
                   "trainable_modules": list(HEAD) if exp.method != "full" else "all",
                   "seed": seed, "model": profile.model, "profile": profile.name,
                   "train_examples": len(data["train"]), "validation_examples": len(data["validation"]),
                   "hyperparameters": asdict(cfg) | {"max_length": profile.max_length,
                                                     "lora_dropout": profile.lora_dropout if lora else None}},
        "metrics": {"validation_accuracy": out.validation_accuracy, "history": out.history,
                    "loss_curve": out.loss_curve},
        "predictions": labels_text(out.predictions), "validation_labels": labels_text(data["validation"]["label"]),
        "trainable_params": params.trainable, "total_params": params.total, "lora_params": params.lora,
        "train_seconds_per_epoch": out.train_seconds_per_epoch, "examples_per_second": out.examples_per_second,
        "peak_memory_bytes": out.peak_memory_bytes,
        "memory_baseline_bytes": 0 if out.device.startswith("cuda") else baseline, "padding_fraction": out.padding_fraction,
        "padding_fraction_random": out.padding_fraction_random, "settings": run_settings(profile, exp),
        "device": out.device, "mixed_precision": out.mixed_precision, "num_processes": out.num_processes,
        **env, "started": started, "finished": now(),
        "load_average": os.getloadavg(),  # 1, 5, 15 min at the end
        "mean_load_average": out.mean_load,  # 1-min, while training: well above the core count, other work shared it
    }
    if distributed_state().is_main_process:
        path = result_path(results, profile.name, name, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        supersede(path)
        if lora:
            adapter = path.parent / "adapters" / path.stem
            tmp = adapter.with_name(adapter.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_adapter(model, tmp)
            shutil.rmtree(adapter, ignore_errors=True)
            tmp.rename(adapter)
            record["adapter"] = str(adapter.relative_to(path.parent))
        write_json_atomic(path, record)
    distributed_state().wait_for_everyone()
    return record


def labels_text(labels) -> str:
    """Class labels (0-9) as one compact string, ``"0110..."``: 872 predictions in a line of JSON."""
    return "".join(str(int(y)) for y in labels)


def recompute_predictions(profile: str, results: str | Path = "results", data_source: str | None = None) -> list[Path]:
    """Add the per-example predictions to stored LoRA runs that lack them, from their saved adapters.
    The recomputed accuracy must equal the stored one, else nothing is written for that run."""
    prof = PROFILES[profile]
    todo = [p for p in sorted((Path(results) / profile).glob("*.json"))
            if "predictions" not in (r := json.loads(p.read_text())) and r.get("adapter")]
    if not todo:
        return []
    data, tokenizer = prepare_data(prof, data_source)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    written = []
    for path in todo:
        record = json.loads(path.read_text())
        model = load_adapter(load_model(prof.model, seed=record["config"]["seed"]), path.parent / record["adapter"])
        _, loader = make_loaders(data, tokenizer, TrainConfig())
        model, loader = accelerator.prepare(model, loader)
        preds, _ = predict(model, loader, accelerator)
        labels = torch.tensor(data["validation"]["label"])
        stored, got = record["metrics"]["validation_accuracy"], (preds == labels).float().mean().item()
        if round(stored * len(labels)) != round(got * len(labels)):
            print(f"{path}: recomputed accuracy {got:.4f} differs from the stored {stored:.4f}; left as it was.",
                  file=sys.stderr)
            continue
        record |= {"predictions": labels_text(preds), "validation_labels": labels_text(labels),
                   "predictions_recomputed": environment() | {"at": now(), "from": record["adapter"]}}
        write_json_atomic(path, record)
        written.append(path)
    return written


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def supersede(path: Path) -> None:
    """Move a stale result (and its adapter) out of the way, to ``superseded/<its finish time>/``:
    a re-run never deletes what an earlier run computed."""
    if not path.exists():
        return
    old = json.loads(path.read_text())
    folder = path.parent / "superseded" / old.get("finished", "unknown").replace(":", "")
    (folder / "adapters").mkdir(parents=True, exist_ok=True)
    if old.get("adapter") and (path.parent / old["adapter"]).exists():
        (path.parent / old["adapter"]).rename(folder / old["adapter"])
    path.rename(folder / path.name)


def run_settings(profile: Profile, exp: Experiment) -> dict:
    """The profile settings a run depends on: its own method's learning rate and epochs, LoRA's dropout only
    in LoRA runs, the ablation budget only in ablations."""
    own = {"lora_dropout": exp.method == "lora", "ablation_train_limit": exp.ablation}
    return ({k: v for k, v in asdict(profile).items()
             if not k.startswith("lr_") and k != "lora_epochs" and own.get(k, True)}
            | {"lr": exp.learning_rate(profile), "epochs": exp.epochs(profile)})


def is_current(settings: dict | None, profile: Profile, exp: Experiment) -> bool:
    """Whether stored ``settings`` agree with every setting the run depends on in ``profile`` as it is now
    (a setting stored with a run that does not depend on it is ignored)."""
    return settings is not None and all(settings.get(k, KeyError) == v for k, v in run_settings(profile, exp).items())


def find_result(results: Path, profile: Profile, name: str, seed: int) -> Path | None:
    """The stored, up-to-date result of this run: a file of the same experiment, whatever ``@lr`` its name
    carries, whose recorded settings are the ones this run would use now (``full@2e-4`` is ``full`` when
    the profile's full fine-tuning rate is 2e-4)."""
    exp = experiment(name)
    shape = replace(exp, name="", lr=None)
    for path in sorted((Path(results) / profile.name).glob(f"{name.partition('@')[0]}*__seed{seed}.json")):
        record = json.loads(path.read_text())
        if (replace(experiment(path.stem.rsplit("__", 1)[0]), name="", lr=None) == shape
                and "predictions" in record and is_current(record.get("settings"), profile, exp)):
            return path
    return None


def canonical_name(name: str, lr: float, profile: Profile) -> str:
    """A stored run's name for the profile as it is now: ``@lr`` only where the rate is not the profile's."""
    base = name.partition("@")[0]
    if lr == experiment(base).learning_rate(profile):
        return base
    return name if "@" in name else f"{base}@{lr:g}"


def write_json_atomic(path: Path, record: dict) -> None:
    """Write to a temporary file, then rename: a reader never sees half a result."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def run_suite(profile: str, names: list[str], seeds: list[int], results: str | Path = "results",
              data_source: str | None = None, force: bool = False, progress: bool = True) -> list[dict]:
    """Run every (experiment, seed) pair that has no result yet; return all their records."""
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {sorted(PROFILES)}.")
    prof, results = PROFILES[profile], Path(results)
    for name in names:
        experiment(name)  # fail on a bad name before any training
    todo = [(n, s) for n in names for s in seeds if force or not find_result(results, prof, n, s)]
    for name, seed in todo:
        if result_path(results, profile, name, seed).exists():
            print(f"{name} seed {seed} was made with other {profile} settings; running it again "
                  f"(the earlier result moves to {results / profile / 'superseded'}).", file=sys.stderr)
    for stale in (results / profile).glob("*.tmp") if distributed_state().is_main_process else ():
        stale.unlink()  # left by a run that was killed mid-write
    if todo:
        data, tokenizer = prepare_data(prof, data_source)
        for i, (name, seed) in enumerate(todo, 1):
            if progress:
                print(f"[{i}/{len(todo)}] {profile}: {name} seed {seed}", file=sys.stderr, flush=True)
            run_one(prof, name, seed, data, tokenizer, results, progress)
    return [json.loads(find_result(results, prof, n, s).read_text()) for n in names for s in seeds]


def load_results(results: str | Path = "results", profile: str | None = None) -> pd.DataFrame:
    """All stored results as one DataFrame (a row per run; config and main metrics as columns).
    A run's ``experiment`` is named for the profile as it is now (see :func:`canonical_name`);
    ``current`` says whether it was made with the profile's current settings."""
    rows = []
    for path in sorted(Path(results).glob(f"{profile or '*'}/*.json")):
        r = json.loads(path.read_text())
        lr, prof = r["config"]["hyperparameters"]["lr"], PROFILES.get(r["config"]["profile"])
        name = canonical_name(r["config"]["experiment"], lr, prof) if prof else r["config"]["experiment"]
        rows.append({**{k: v for k, v in r["config"].items() if k != "hyperparameters"},
                     "experiment": name, "lr": lr, "epochs": r["config"]["hyperparameters"]["epochs"],
                     "lora_dropout": r["config"]["hyperparameters"].get("lora_dropout"),
                     "validation_accuracy": r["metrics"]["validation_accuracy"],
                     **{k: r[k] for k in ("trainable_params", "total_params", "lora_params",
                                          "train_seconds_per_epoch", "examples_per_second", "peak_memory_bytes",
                                          "device", "git_commit", "git_dirty")},
                     "run_seconds": (datetime.fromisoformat(r["finished"]) - datetime.fromisoformat(r["started"])).total_seconds(),
                     "current": bool(prof) and "predictions" in r and is_current(r.get("settings"), prof,
                                                                                 experiment(name)),
                     "mean_load_average": r.get("mean_load_average"),
                     "predictions": r.get("predictions"), "validation_labels": r.get("validation_labels"),
                     "adapter": str(path.parent / r["adapter"]) if r.get("adapter") else None,
                     "file": str(path)})
    return pd.DataFrame(rows)
