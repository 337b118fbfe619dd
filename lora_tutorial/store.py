"""Stored runs: one typed record per run, one JSON file per record, and the folder that holds them.

``results/<profile>/<experiment>__seed<s>.json`` (the experiment's full name: method, rank, projections,
layers, epochs, training examples, learning rate), its adapter in ``adapters/<same name>/``. A record is
written atomically; a re-run never deletes what an earlier run computed (the older record moves to
``superseded/<its finish time>/``). :func:`migrate` rewrites the earlier flat layout into this one.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import torch

from .experiments import PROFILES, Experiment, Profile, RunSpec, suites
from .models import layer_count

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "peft", "lora-tutorial")
RESULTS_ENV = "LORA_TUTORIAL_RESULTS"
LEGACY_PROFILES = {"cpu-tune": "cpu"}  # the 20,000-example tuning profile is the cpu profile with -n20000


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_results() -> Path:
    """The results folder: ``$LORA_TUTORIAL_RESULTS``, else the nearest ``results/`` in the current folder
    or above it (chapters run in ``book/``), else ``./results``."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV])
    return next(
        (p / "results" for p in (Path.cwd(), *Path.cwd().parents) if (p / "results").is_dir()),
        Path("results"),
    )


@dataclass
class Params:
    """Parameter counts of a run: trainable, total, and LoRA's own (0 for full fine-tuning)."""

    trainable: int
    total: int
    lora: int


@dataclass
class Timing:
    """Wall-clock facts of a run; a ``mean_load_average`` well above the core count: the CPU was shared."""

    train_seconds_per_epoch: float
    examples_per_second: float
    started: str
    finished: str
    padding_fraction: float = 0.0
    padding_fraction_random: float = 0.0
    load_average: list[float] | None = None  # 1, 5, 15 min, at the end
    mean_load_average: float | None = None  # 1 min, sampled while training

    @property
    def run_seconds(self) -> float:
        return (datetime.fromisoformat(self.finished) - datetime.fromisoformat(self.started)).total_seconds()


@dataclass
class Memory:
    """Peak memory of a run, and on CPU the baseline it is measured above."""

    peak_bytes: int  # CUDA max allocated, or the process's peak RSS on CPU
    baseline_bytes: int | None = None  # RSS with the data loaded, before the model was built (CPU)


@dataclass
class Provenance:
    """Where and with what a run was made."""

    versions: dict
    machine: dict
    git_commit: str | None
    git_dirty: bool | None
    device: str = "cpu"
    mixed_precision: str = "no"
    num_processes: int = 1
    predictions_recomputed: dict | None = None  # set when predictions were added later from the adapter

    @classmethod
    def here(cls, **run) -> Provenance:
        """Package versions, machine and git commit of the code as it is now."""

        def v(name: str) -> str | None:
            try:
                return version(name)
            except PackageNotFoundError:
                return None

        try:
            git = dict(capture_output=True, text=True, cwd=Path(__file__).parent)
            commit = subprocess.run(["git", "rev-parse", "HEAD"], check=True, **git).stdout.strip()
            dirty = bool(
                subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git).stdout.strip()
            )
        except (OSError, subprocess.CalledProcessError):
            commit, dirty = None, None
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return cls(
            versions={p: v(p) for p in PACKAGES} | {"python": platform.python_version()},
            machine={
                "platform": platform.platform(),
                "processor": platform.machine(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "gpu": gpu,
            },
            git_commit=commit,
            git_dirty=dirty,
            **run,
        )


@dataclass
class RunRecord:
    """Everything one run stored: what ran, how it scored (with its prediction for every validation
    sentence), how long it took, how much memory it used, and where it was made."""

    profile: str
    experiment: str  # the resolved name (Experiment.parse gives it back)
    seed: int
    config: dict  # the model and optimiser as built: LoRA config, hyper-parameters, data sizes
    settings: dict  # the profile's fixed settings the run was made with (see Profile.fixed_settings)
    metrics: dict  # validation_accuracy, per-epoch history, loss_curve
    params: Params
    timing: Timing
    memory: Memory
    provenance: Provenance
    predictions: str | None = None  # predicted label per validation example, one character each
    validation_labels: str | None = None  # the true labels, in the same order
    adapter: str | None = None  # the adapter's folder, relative to the record's
    migrated_from: str | None = None  # the file this record was stored as before the current layout

    @property
    def spec(self) -> Experiment:
        return Experiment.parse(self.experiment)

    @property
    def accuracy(self) -> float:
        return self.metrics["validation_accuracy"]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> RunRecord:
        if "experiment" not in d:
            raise ValueError(
                "This result file has the earlier layout; convert the folder with "
                "python -m lora_tutorial migrate."
            )
        parts = {"params": Params, "timing": Timing, "memory": Memory, "provenance": Provenance}
        return cls(**{k: parts[k](**v) if k in parts else v for k, v in d.items()})


def _legacy_experiment(d: dict) -> Experiment:
    """The resolved experiment of a record in the earlier layout: rate and epochs as it recorded them; its
    budget the profile's ``train_limit``, else the ablation budget if its name had a projections or layers
    part (that grammar's rule for an ablation), else the full split."""
    c, s = d["config"], d.get("settings", {})
    base = c["experiment"].partition("@")[0]
    if s.get("train_limit") is not None:
        examples = s["train_limit"]
    elif re.fullmatch(r"[a-z]+-r\d+-.+", base):
        examples = c["train_examples"]
    else:
        examples = None
    hp = c["hyperparameters"]
    return replace(Experiment.parse(base), lr=hp["lr"], epochs=hp["epochs"], train_examples=examples)


LEGACY_KEYS = {"peak_bytes": "peak_memory_bytes", "baseline_bytes": "memory_baseline_bytes"}


def from_legacy(d: dict) -> RunRecord:
    """A record of the earlier flat layout as a :class:`RunRecord`; every stored value is kept."""
    d = dict(d)
    take = lambda cls: cls(
        **{
            f.name: d.pop(k)
            for f in fields(cls)  # noqa: E731
            if (k := LEGACY_KEYS.get(f.name, f.name)) in d
        }
    )
    exp = _legacy_experiment(d)
    config = d.pop("config")
    record = RunRecord(
        profile=LEGACY_PROFILES.get(config["profile"], config["profile"]),
        experiment=exp.name,
        seed=config["seed"],
        config=config,
        settings=d.pop("settings", {}),
        metrics=d.pop("metrics"),
        params=Params(d.pop("trainable_params"), d.pop("total_params"), d.pop("lora_params")),
        timing=take(Timing),
        memory=take(Memory),
        provenance=take(Provenance),
        predictions=d.pop("predictions", None),
        validation_labels=d.pop("validation_labels", None),
        adapter=d.pop("adapter", None),
    )
    if d:
        raise ValueError(f"Unknown fields {sorted(d)} in a stored result; nothing was converted.")
    return record


def is_stale(record: RunRecord, profile: Profile) -> bool:
    """Made with fixed settings (model, batch size, sequence length, evaluation set, LoRA dropout) other
    than the profile's now."""
    fixed = profile.fixed_settings(record.config["method"])
    return any(record.settings.get(k, KeyError) != v for k, v in fixed.items())


CONTENTION_MARGIN = 0.5  # cores: a run's own threads load the machine to about its core count


def is_contended(record: RunRecord) -> bool:
    """Whether the run lacked the whole CPU while it trained: other work shared it (the mean 1-minute load
    average during training, or for runs that did not sample it the 5-minute one at the end, exceeded the
    core count by more than half a core), or it was limited to fewer threads than cores. Its times are
    then left out of time tables."""
    if record.provenance.device.startswith("cuda"):
        return False
    timing, cpus = record.timing, record.provenance.machine.get("cpus") or 1
    if (record.provenance.machine.get("torch_threads") or cpus) + CONTENTION_MARGIN < cpus:
        return True
    load = (
        timing.mean_load_average
        if timing.mean_load_average is not None
        else (timing.load_average or [0, 0])[1]
    )
    return load > cpus + CONTENTION_MARGIN


class ResultStore:
    """The stored runs of one profile: paths, atomic writes, lookup, staleness, superseding, tables."""

    def __init__(self, profile: str, root: str | Path | None = None) -> None:
        self.profile, self.root = profile, Path(root) if root is not None else default_results()
        self.folder = self.root / profile

    def path(self, spec: RunSpec) -> Path:
        return self.folder / f"{spec.stem}.json"

    def load(self, path: Path) -> RunRecord:
        return RunRecord.from_json(json.loads(Path(path).read_text()))

    def records(self, superseded: bool = False) -> list[tuple[Path, RunRecord]]:
        """Every stored record (and with ``superseded``, the replaced ones too), by path."""
        paths = sorted(self.folder.glob("*.json"))
        if superseded:
            paths += sorted(self.folder.glob("superseded/*/*.json"))
        return [(p, self.load(p)) for p in paths]

    def find(self, spec: RunSpec) -> RunRecord | None:
        """The stored, up-to-date record of this run: same experiment and seed, the profile's fixed
        settings, and per-example predictions."""
        path = self.path(spec)
        if not path.exists():
            return None
        record = self.load(path)
        return record if record.predictions and not is_stale(record, spec.profile) else None

    def remove_partial_writes(self) -> None:
        for stale in self.folder.glob("*.tmp"):
            stale.unlink()  # left by a run that was killed mid-write

    def write(self, record: RunRecord, save_adapter: Callable[[Path], object] | None = None) -> Path:
        """Store ``record`` (and its adapter, written by ``save_adapter(folder)``), moving aside any
        earlier record of the same run."""
        path = self.folder / f"{record.experiment}__seed{record.seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.supersede(path)
        if save_adapter is not None:
            adapter = path.parent / "adapters" / path.stem
            tmp = adapter.with_name(adapter.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_adapter(tmp)
            shutil.rmtree(adapter, ignore_errors=True)
            tmp.rename(adapter)
            record = replace(record, adapter=str(adapter.relative_to(path.parent)))
        write_json_atomic(path, record.to_json())
        return path

    def update(self, path: Path, record: RunRecord) -> None:
        """Rewrite a stored record in place (e.g. with predictions recomputed from its adapter)."""
        write_json_atomic(path, record.to_json())

    def supersede(self, path: Path) -> None:
        """Move a stored record (and its adapter) to ``superseded/<its finish time>/``."""
        if not path.exists():
            return
        old = json.loads(path.read_text())
        finished = old["timing"]["finished"] if "timing" in old else old.get("finished", "unknown")
        folder = path.parent / "superseded" / finished.replace(":", "")
        (folder / "adapters").mkdir(parents=True, exist_ok=True)
        if old.get("adapter") and (path.parent / old["adapter"]).exists():
            (path.parent / old["adapter"]).rename(folder / old["adapter"])
        path.rename(folder / path.name)

    def frame(self, superseded: bool = False) -> pd.DataFrame:
        """Every stored run as a table row (see :meth:`rows`)."""
        return pd.DataFrame(self.rows(superseded))

    def rows(self, superseded: bool = False) -> list[dict]:
        """Every stored run as a flat dict. ``experiment`` is the short name a suite of the profile uses
        for the run (``lora-r16``) where there is one, else its full name; ``current`` says whether it was
        made with the profile's fixed settings and not replaced, ``used`` whether the profile's suites
        use it (the others chose settings or were earlier trials), ``contended`` whether other work
        shared the CPU while it trained (its times are not the machine's)."""
        profile = PROFILES.get(self.profile)
        labels = {}
        if profile is not None:
            for pairs in suites(profile, layer_count(profile.model)).values():
                for label, name in pairs:
                    labels.setdefault(Experiment.parse(name).resolve(profile).name, label)
        rows = []
        for path, r in self.records(superseded):
            hp = r.config["hyperparameters"]
            old = "superseded" in path.relative_to(self.folder).parts
            current = bool(profile) and not old and not is_stale(r, profile)
            rows.append(
                {
                    **{
                        k: v
                        for k, v in r.config.items()
                        if k not in ("hyperparameters", "experiment", "profile")
                    },
                    "experiment": labels.get(r.experiment, r.experiment),
                    "name": r.experiment,
                    "profile": r.profile,
                    "lr": hp["lr"],
                    "epochs": hp["epochs"],
                    "lora_dropout": hp.get("lora_dropout"),
                    "validation_accuracy": r.accuracy,
                    "trainable_params": r.params.trainable,
                    "total_params": r.params.total,
                    "lora_params": r.params.lora,
                    "train_seconds_per_epoch": r.timing.train_seconds_per_epoch,
                    "examples_per_second": r.timing.examples_per_second,
                    "run_seconds": r.timing.run_seconds,
                    "mean_load_average": r.timing.mean_load_average,
                    "contended": is_contended(r),
                    "peak_memory_bytes": r.memory.peak_bytes,
                    "memory_baseline_bytes": r.memory.baseline_bytes,
                    "device": r.provenance.device,
                    "cpus": r.provenance.machine.get("cpus"),
                    "torch": r.provenance.versions.get("torch"),
                    "git_commit": r.provenance.git_commit,
                    "git_dirty": r.provenance.git_dirty,
                    "current": current,
                    "used": current and r.experiment in labels,
                    "superseded": old,
                    "predictions": r.predictions,
                    "validation_labels": r.validation_labels,
                    "adapter": str((path.parent / r.adapter).resolve()) if r.adapter else None,
                    "file": str(path),
                }
            )
        return rows


def load_results(
    results: str | Path | None = None, profile: str = "cpu", superseded: bool = False
) -> pd.DataFrame:
    """A profile's stored runs as one DataFrame (see :meth:`ResultStore.frame`)."""
    return ResultStore(profile, results).frame(superseded)


def write_json_atomic(path: Path, record: dict) -> None:
    """Write to a temporary file, then rename: a reader never sees half a result."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def _finished(path: Path) -> str:
    return RunRecord.from_json(json.loads(path.read_text())).timing.finished


def migrate(root: str | Path | None = None) -> list[tuple[Path, Path]]:
    """Rewrite every record of the earlier flat layout under ``root`` into the current one (typed record,
    a file named by its full experiment name; ``cpu-tune`` runs join ``cpu`` with ``-n20000``), adapters
    moved along. A record that is stale for its profile, or whose new name is taken, goes to
    ``superseded/``. Returns ``(old path, new path)`` pairs; running it again does nothing."""
    root = Path(root) if root is not None else default_results()
    moves = []
    for old in sorted(root.glob("*/**/*.json")):
        relative = old.relative_to(root)
        if relative.parts[0] == "bench" or "adapters" in relative.parts:
            continue
        data = json.loads(old.read_text())
        if "experiment" in data:
            continue
        record = replace(from_legacy(data), migrated_from=str(relative))
        inside = relative.parts[1:-1]  # () at the top, ("superseded", "<time>") for a superseded record
        folder = root / record.profile / Path(*inside)
        new = folder / f"{record.experiment}__seed{record.seed}.json"
        profile = PROFILES.get(record.profile)
        if not inside:
            stale = profile is not None and is_stale(record, profile)
            if not stale and new.exists() and _finished(new) < record.timing.finished:
                ResultStore(record.profile, root).supersede(new)  # two runs of one spec: the later one stays
            if stale or new.exists():
                folder = root / record.profile / "superseded" / record.timing.finished.replace(":", "")
                new = folder / new.name
        if new.exists():
            raise ValueError(f"Cannot migrate {old}: {new} exists already; move one of them aside first.")
        folder.mkdir(parents=True, exist_ok=True)
        if record.adapter:
            (folder / "adapters").mkdir(exist_ok=True)
            (old.parent / record.adapter).rename(folder / "adapters" / new.stem)
            record = replace(record, adapter=f"adapters/{new.stem}")
        write_json_atomic(new, record.to_json())
        old.unlink()
        moves.append((old, new))
    for folder in sorted(root.glob("**/"), key=lambda p: len(p.parts), reverse=True):
        if folder != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return moves
