"""What a stored run holds: one typed record per run, and the rules that read it (stale for a profile,
timed on a shared CPU, made on which data)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from ..errors import UsageError
from ..provenance import Provenance
from .experiments import Profile


@dataclass(frozen=True)
class DataUsed:
    """What a run trained and was evaluated on: a SHA-256 per split (see
    :func:`lora_tutorial.data.fingerprint`), the number of training examples and the validation labels."""

    sha256: dict[str, str]
    train_examples: int
    validation_labels: str

    def matches(self, record: RunRecord) -> bool:
        """Whether ``record`` was made on this data. Records from before fingerprints were stored are
        matched on what they do store: the number of training examples and every validation label."""
        stored = record.config.get("data_sha256")
        if stored is not None:
            return stored == self.sha256
        return (record.config.get("train_examples"), record.validation_labels) == (
            self.train_examples,
            self.validation_labels,
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
    probabilities: list[float] | None = None  # P(positive) per validation example, in the same order
    migrated_from: str | None = None  # the file a record of an earlier layout was converted from

    @property
    def accuracy(self) -> float:
        return self.metrics["validation_accuracy"]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> RunRecord:
        if "experiment" not in d:
            raise UsageError("not a run record of lora_tutorial (it has no 'experiment' field)")
        parts = {"params": Params, "timing": Timing, "memory": Memory, "provenance": Provenance}
        return cls(**{k: parts[k](**v) if k in parts else v for k, v in d.items()})


def is_stale(record: RunRecord, profile: Profile) -> bool:
    """Made with fixed settings (model, batch size, sequence length, evaluation set, optimiser settings, LoRA
    dropout) other than the profile's now. A setting a record's ``settings`` lack (stored before it was a
    profile field) is read from the hyper-parameters the run recorded."""
    fixed = profile.fixed_settings(record.config["method"])
    recorded = record.config.get("hyperparameters", {})
    return any(record.settings.get(k, recorded.get(k, KeyError)) != v for k, v in fixed.items())


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
