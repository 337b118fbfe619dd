"""The study's experiments and profiles: every hyper-parameter of every run is stated here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .lora import LoRAConfig

HEAD = ("classifier", "pooler")  # trained by every method (the embedded model's pooler was never trained)
RANKS = (1, 4, 8, 16, 32)
MODULE_SETS = {"q": ("query",), "v": ("value",), "qv": ("query", "value"),
               "qkvo": ("query", "key", "value", "attention.output.dense"),
               "qkvo-ffn": ("query", "key", "value", "attention.output.dense", "intermediate.dense",
                            "output.dense")}


@dataclass(frozen=True)
class Profile:
    """Model, data budget and optimisation settings shared by all runs of a profile."""

    name: str
    model: str
    num_layers: int
    epochs: int
    batch_size: int
    lr_full: float
    lr_lora: float
    lr_head: float
    max_length: int = 128
    train_limit: int | None = None   # None: the full SST-2 training split
    eval_limit: int | None = None    # None: the full validation split
    lora_dropout: float = 0.1
    ablation_train_limit: int | None = None  # smaller fixed budget for ablations (names with -target/-layers)
    lora_epochs: int | None = None  # epochs of the LoRA runs on the full budget (None: epochs); ablations train epochs


# The cpu learning rates were chosen on the validation split: first with the cpu-tune profile (results/cpu-tune,
# 20k examples): full fine-tuning 2e-5, 5e-5, 1e-4, 2e-4 -> 2e-4; LoRA r=16 5e-4, 1e-3, 2e-3, 4e-3 -> 2e-3; then on
# the full split (results/cpu, names with @lr): full fine-tuning 2e-4 -> 1e-4. LoRA epochs on the full split:
# 1 epoch (results/cpu/superseded) -> 2 (a LoRA epoch takes about 0.6 of a full fine-tuning epoch); with 2 epochs,
# LoRA r=16 at 2e-3 vs 1e-3 on seeds 0 and 1 -> 1e-3 (higher mean, smaller spread); then 2 vs 3 LoRA epochs
# at 1e-3 on seeds 0 and 1 -> 2 (3 epochs was lower on both seeds); then LoRA dropout 0.1 vs 0 on seeds 0 and 1
# -> 0.1 (no dropout: higher on seed 0, lower on seed 1, lower mean).
PROFILES = {
    "smoke": Profile("smoke", model="tiny", num_layers=2, epochs=3, batch_size=32, lr_full=1e-3, lr_lora=3e-3, lr_head=3e-3,
                     max_length=64, train_limit=2048, eval_limit=256, lora_dropout=0.0),
    "cpu": Profile("cpu", model="minilm", num_layers=6, epochs=1, batch_size=32, lr_full=1e-4, lr_lora=1e-3, lr_head=1e-3,
                   ablation_train_limit=20_000, lora_epochs=2),
    # Learning-rate selection: the cpu settings on a fixed 20,000-example subset of the training split.
    "cpu-tune": Profile("cpu-tune", model="minilm", num_layers=6, epochs=1, batch_size=32, lr_full=2e-5,
                        lr_lora=1e-3, lr_head=1e-3, train_limit=20_000),
    "gpu": Profile("gpu", model="bert-base-uncased", num_layers=12, epochs=3, batch_size=32, lr_full=2e-5, lr_lora=5e-4,
                   lr_head=1e-3),
}


@dataclass(frozen=True)
class Experiment:
    """One configuration of the study: ``full``, ``head`` (head only) or ``lora``."""

    name: str
    method: str
    r: int | None = None
    target: str = "qv"
    layers: str = "all"   # "all", "lower", "upper" or a single layer index as a string
    lr: float | None = None  # overrides the profile's learning rate for this method
    variant: str = "lora"    # "lora", "rslora" (alpha/sqrt(r)), "dora" or "loraplus" (B learns 16x faster)
    ablation: bool = False   # named with a target or layers part: trains on the profile's ablation budget

    @property
    def lr_ratio_b(self) -> float:
        """B's learning rate over A's (LoRA+, Hayou et al., 2024)."""
        return LORAPLUS_RATIO if self.variant == "loraplus" else 1.0

    def epochs(self, profile: Profile) -> int:
        longer = self.method == "lora" and not self.ablation and profile.lora_epochs
        return profile.lora_epochs if longer else profile.epochs

    def learning_rate(self, profile: Profile) -> float:
        return self.lr if self.lr is not None else getattr(profile, f"lr_{self.method}")

    def lora_config(self, num_layers: int, dropout: float) -> LoRAConfig:
        """The LoRAConfig for a model with ``num_layers`` layers (alpha = 2r: the scaling stays 2)."""
        half = num_layers // 2
        layers = {"all": None, "lower": list(range(half)), "upper": list(range(half, num_layers))}.get(
            self.layers, [int(self.layers)] if self.layers.isdigit() else None)
        return LoRAConfig(r=self.r, alpha=2 * self.r, dropout=dropout, target_modules=MODULE_SETS[self.target],
                          layers=layers, trainable=HEAD, rslora=self.variant == "rslora", dora=self.variant == "dora")


LORAPLUS_RATIO = 16.0
_NAME = re.compile(r"(lora|rslora|dora|loraplus)-r(\d+)(?:-(q|v|qv|qkvo|qkvo-ffn))?(?:-(lower|upper|layer\d+))?")


def experiment(name: str) -> Experiment:
    """Parse an experiment name: ``full``, ``head``, ``lora-r16`` (``rslora-r16``, ``dora-r16``, ``loraplus-r16``), ``lora-r8-qkvo``, ``lora-r8-lower``,
    ``lora-r8-upper``, ``lora-r8-layer3`` (target and layers may be combined: ``lora-r8-q-upper``).
    A suffix ``@<lr>`` overrides the profile's learning rate: ``lora-r16@2e-3``, ``full@5e-5``.
    A name with a target or layers part is an ablation and trains on the profile's ablation budget:
    ``lora-r8-qv`` is ``lora-r8`` on that budget."""
    base, _, lr_text = name.partition("@")
    try:
        lr = float(lr_text) if lr_text else None
    except ValueError:
        lr = -1.0
    m = _NAME.fullmatch(base)
    if (base not in ("full", "head") and (not m or int(m.group(2)) <= 0)) or (lr is not None and lr <= 0):
        raise ValueError(f"Unknown experiment {name!r}; use full, head, lora-r<r>[-q|-v|-qv|-qkvo|-qkvo-ffn]"
                         "[-lower|-upper|-layer<i>][@<lr>] (or rslora-, dora-, loraplus- for lora-), e.g. lora-r16, "
                         "lora-r8-layer3, dora-r16 or full@5e-5.")
    if base in ("full", "head"):
        return Experiment(name, base, lr=lr)
    variant, r, target, layers = m.group(1), int(m.group(2)), m.group(3) or "qv", m.group(4) or "all"
    return Experiment(name, "lora", r=r, target=target, layers=layers.removeprefix("layer"), lr=lr, variant=variant,
                      ablation=bool(m.group(3) or m.group(4)))


def suite(name: str, num_layers: int = 6) -> list[str]:
    """Named groups of experiments: headline, rank, layers, modules, variants, all."""
    suites = {
        "headline": ["full", "lora-r16"],
        "rank": [f"lora-r{r}" for r in RANKS],
        "layers": ["lora-r8-qv", "lora-r8-lower", "lora-r8-upper"] + [f"lora-r8-layer{i}" for i in range(num_layers)],
        "modules": [f"lora-r8-{t}" for t in MODULE_SETS],
        "variants": [f"{v}-r16-qv" for v in ("lora", "rslora", "dora", "loraplus")],  # on the ablation budget
    }
    if name == "all":
        return list(dict.fromkeys(["head"] + [e for s in suites.values() for e in s]))
    if name not in suites:
        raise ValueError(f"Unknown suite {name!r}; choose one of {sorted(suites) + ['all']}.")
    return suites[name]
