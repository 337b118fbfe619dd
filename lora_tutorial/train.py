"""A plain PyTorch training loop; Accelerate places it on CPU/GPU, adds bf16 autocast on CUDA and
data parallelism under ``accelerate launch``."""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field

import psutil
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, set_seed
from datasets import DatasetDict
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from .data import LengthGroupedBatches, padding_fraction, random_batches
from .errors import LossDiverged


def distributed_state() -> PartialState:
    """Accelerate's process state; on a machine without CUDA, processes started by ``torchrun`` or
    ``accelerate launch --multi_gpu`` join a CPU (gloo) process group."""
    return PartialState(cpu=not torch.cuda.is_available())


@dataclass
class TrainConfig:
    """Optimisation settings for one run."""

    lr: float = 5e-4
    epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    lr_ratio_b: float = 1.0  # LoRA+: the learning rate of LoRA's B matrices is lr * lr_ratio_b
    seed: int = 0
    log_every: int = 20
    progress: bool = True
    mixed_precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 elsewhere; or "no" / "bf16"


@dataclass
class TrainResult:
    """What a run measured: per-epoch accuracy and timing, the loss curve, peak memory."""

    history: list[dict] = field(default_factory=list)
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    train_seconds_per_epoch: float = 0.0
    examples_per_second: float = 0.0
    peak_memory_bytes: int = 0
    padding_fraction: float = 0.0  # share of padding tokens with length-grouped batches
    padding_fraction_random: float = 0.0  # the same with plain shuffled batches
    device: str = "cpu"
    mixed_precision: str = "no"
    num_processes: int = 1
    predictions: list[int] = field(
        default_factory=list
    )  # last epoch's predicted label per validation example
    probabilities: list[float] = field(
        default_factory=list
    )  # last epoch's P(positive) per validation example
    mean_load: float = 0.0  # mean 1-minute load average while training (CPU); its own threads count too

    @property
    def validation_accuracy(self) -> float:
        return self.history[-1]["validation_accuracy"]

    def to_dict(self) -> dict:
        return asdict(self) | {"validation_accuracy": self.validation_accuracy}


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


def make_loaders(
    data: DatasetDict, tokenizer: PreTrainedTokenizerBase, cfg: TrainConfig
) -> tuple[DataLoader, DataLoader]:
    """Length-grouped, dynamically padded train batches; sorted evaluation batches."""
    collate = DataCollatorWithPadding(tokenizer)
    train, val = (data[s].remove_columns("length").with_format("torch") for s in ("train", "validation"))
    return (
        DataLoader(
            train,
            collate_fn=collate,
            batch_sampler=LengthGroupedBatches(data["train"]["length"], cfg.batch_size, seed=cfg.seed),
        ),
        DataLoader(
            val,
            collate_fn=collate,
            batch_sampler=LengthGroupedBatches(
                data["validation"]["length"], cfg.eval_batch_size, shuffle=False
            ),
        ),
    )


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm weights; LoRA's B
    matrices at ``lr * lr_ratio_b`` (LoRA+)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for n, p in params if p.ndim >= 2 and not n.endswith("lora_B")],
            "weight_decay": cfg.weight_decay,
        },
        {
            "params": [p for n, p in params if n.endswith("lora_B")],
            "weight_decay": cfg.weight_decay,
            "lr": cfg.lr * cfg.lr_ratio_b,
        },
        {"params": [p for n, p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, accelerator: Accelerator) -> Prediction:
    """Every example's predicted label and class probabilities, in the dataset's order (gathered across
    processes), and the mean loss."""
    was_training = model.training
    model.eval()
    sampler = getattr(
        loader.batch_sampler, "batch_sampler", loader.batch_sampler
    )  # Accelerate's shard wraps it
    probs, loss, order = [], 0.0, [i for batch in sampler for i in batch]
    for batch in loader:
        logits, labels = accelerator.gather_for_metrics((model(**batch).logits.float(), batch["labels"]))
        loss += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        probs.append(logits.double().softmax(-1).cpu())  # float64: 1 - p keeps its digits near 1
    model.train(was_training)
    out = torch.empty(len(order), probs[0].shape[-1], dtype=torch.float64)
    out[torch.tensor(order)] = torch.cat(probs)
    return Prediction(out.argmax(-1), out, loss / len(order))


@dataclass
class Prediction:
    """A model's output on a dataset: labels, class probabilities (one row per example), mean loss."""

    labels: torch.Tensor
    probabilities: torch.Tensor
    loss: float


def evaluate(model: nn.Module, loader: DataLoader, accelerator: Accelerator, labels: list[int]) -> dict:
    """Validation accuracy, mean loss, and every example's predicted label and probability of the
    positive class (in dataset order)."""
    out = predict(model, loader, accelerator)
    return {
        "validation_accuracy": (out.labels == torch.tensor(labels)).float().mean().item(),
        "validation_loss": out.loss,
        "predictions": out.labels.tolist(),
        "probabilities": out.probabilities[:, 1].tolist(),
    }


def train(
    model: nn.Module, data: DatasetDict, tokenizer: PreTrainedTokenizerBase, cfg: TrainConfig
) -> TrainResult:
    """Fine-tune ``model`` (whatever is trainable in it) on tokenized ``data``; evaluate every epoch."""
    set_seed(cfg.seed)
    cuda = torch.cuda.is_available()
    distributed_state()
    # split_batches: each batch is cut across processes, so N processes train exactly like one.
    precision = ("bf16" if cuda else "no") if cfg.mixed_precision == "auto" else cfg.mixed_precision
    accelerator = Accelerator(
        mixed_precision=precision, cpu=not cuda, dataloader_config=DataLoaderConfiguration(split_batches=True)
    )
    train_loader, val_loader = make_loaders(data, tokenizer, cfg)
    optimizer = make_optimizer(model, cfg)
    steps = cfg.epochs * len(train_loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * steps), steps)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )
    lengths = data["train"]["length"]
    result = TrainResult(
        device=str(accelerator.device),
        mixed_precision=accelerator.mixed_precision,
        num_processes=accelerator.num_processes,
        padding_fraction=padding_fraction(
            lengths, iter(LengthGroupedBatches(lengths, cfg.batch_size, seed=cfg.seed))
        ),
        padding_fraction_random=padding_fraction(
            lengths, iter(random_batches(len(lengths), cfg.batch_size, cfg.seed))
        ),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    epoch_seconds, step = [], 0
    model.train()
    labels = data["validation"]["label"]
    with ResourceMonitor(accelerator.device) as monitor:
        for epoch in range(cfg.epochs):
            bar = tqdm(
                train_loader,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not (cfg.progress and accelerator.is_main_process),
            )
            start = time.perf_counter()
            for batch in bar:
                loss = model(**batch).loss
                if not torch.isfinite(loss):
                    raise LossDiverged(
                        f"The loss diverged (became {loss.item()}) at step {step} (epoch {epoch + 1}); "
                        f"lower the learning rate (now {cfg.lr:g}) and run again."
                    )
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % cfg.log_every == 0 or step == 1:
                    value = accelerator.reduce(loss.detach(), "mean").item()
                    result.loss_curve.append((step, value))
                    bar.set_postfix(loss=f"{value:.4f}")
            epoch_seconds.append(time.perf_counter() - start)
            scores = evaluate(model, val_loader, accelerator, labels)
            result.predictions, result.probabilities = scores.pop("predictions"), scores.pop("probabilities")
            result.history.append({"epoch": epoch + 1, "train_seconds": epoch_seconds[-1], **scores})
    result.train_seconds_per_epoch = sum(epoch_seconds) / len(epoch_seconds)
    result.examples_per_second = len(data["train"]) / result.train_seconds_per_epoch
    result.peak_memory_bytes, result.mean_load = monitor.peak, monitor.mean_load
    accelerator.free_memory()
    return result
