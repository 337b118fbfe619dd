"""LoRA from scratch: a wrapper around a frozen ``nn.Linear`` and the helpers that put it in a model.

The adapted layer computes ``h = W x + b + s * B A dropout(x)`` with ``A`` of shape r x in,
``B`` of shape out x r (zero at init) and ``s = alpha / r``. A :class:`Variant` changes one or more of the
steps (scale, initialisation, forward, merge): rsLoRA's ``alpha / sqrt(r)`` here, DoRA in dora.py, PiSSA in
pissa.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError

CLASSIFIER_NAMES = ("classifier", "score")  # a sequence classifier's head, in BERT and in decoder models
LORA_PARAMS = ("lora_A", "lora_B")  # the parameter names of a LoRA update (peft's names too)


def is_lora_param(name: str) -> bool:
    """Whether a parameter name (``...query.lora_A``) is one of LoRA's A or B matrices."""
    return name.rsplit(".", 1)[-1] in LORA_PARAMS


def _check_hparams(r: int, alpha: float, dropout: float, init: str, variant: str) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise UsageError(f"LoRA rank r must be a positive integer, got {r!r}; use e.g. r=8.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise UsageError(f"LoRA alpha must be > 0, got {alpha!r}; a common choice is alpha = 2 * r.")
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"LoRA dropout must be in [0, 1), got {dropout!r}; use 0.0 to disable it.")
    if init not in INITIALISERS:
        raise UsageError(f"Unknown LoRA init {init!r}; choose one of {tuple(INITIALISERS)}.")
    if variant not in VARIANTS:
        raise UsageError(f"Unknown LoRA variant {variant!r}; choose one of {tuple(VARIANTS)}.")
    if "init_lora_weights" in VARIANTS[variant].peft and init != "kaiming":
        raise UsageError(f"The {variant} variant sets A and B itself; drop init={init!r}.")


class LoRADropout(nn.Dropout):
    """``nn.Dropout`` with the mask drawn as ``uniform >= p``: the same distribution as ``bernoulli(1 - p)``,
    and about 40 % cheaper to draw on CPU, where drawing masks dominates LoRA's extra training cost."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return torch.where(torch.rand_like(x) >= self.p, x / (1 - self.p), 0.0)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``scaling * B @ A``."""

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        init: str = "kaiming",
        variant: str = "lora",
    ) -> None:
        super().__init__()
        _check_hparams(r, alpha, dropout, init, variant)
        if not isinstance(base, nn.Linear):
            raise UsageError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}.")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.init, self.variant = r, alpha, init, VARIANTS[variant]
        self.scaling = self.variant.scaling(r, alpha)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))
        self.dropout = LoRADropout(dropout) if dropout > 0 else nn.Identity()
        # Saved with the weights, so a reloaded merged model knows it is merged (no double merge).
        self.register_buffer("merged", torch.tensor(False, device=w.device))
        self.enabled = True  # False: the layer computes its base alone (see adapters.AdapterSet.disabled)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """Initialise A and B (and any parameter the variant adds) as the layer's variant says."""
        self.variant.init(self)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank path alone, ``scaling * B A dropout(x)``."""
        return F.linear(F.linear(self.dropout(x), self.lora_A) * self.scaling, self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``W x + b + scaling * B A dropout(x)`` (or the variant's forward); merged or disabled, the base
        layer (which, merged, holds the update)."""
        return self.base(x) if self.merged or not self.enabled else self.variant.forward(self, x)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B @ A``, shaped like the base weight."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (W <- W + dW); a no-op if already merged."""
        if not self.merged:
            self.variant.merge(self)
            self.merged.fill_(True)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight (W <- W - dW); a no-op if not merged."""
        if self.merged:
            self.variant.unmerge(self)
            self.merged.fill_(False)

    def extra_repr(self) -> str:
        variant = "" if self.variant.name == "lora" else f"{self.variant.name}, "
        return (
            f"{variant}r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, merged={bool(self.merged)}"
        )


def kaiming_init(layer: LoRALinear) -> None:
    """A Kaiming-uniform (as ``nn.Linear`` initialises its weight), B zero: the update starts at 0."""
    nn.init.kaiming_uniform_(layer.lora_A, a=math.sqrt(5))
    nn.init.zeros_(layer.lora_B)


def gaussian_init(layer: LoRALinear) -> None:
    """A drawn from N(0, 1/r^2), B zero."""
    nn.init.normal_(layer.lora_A, std=1 / layer.r)
    nn.init.zeros_(layer.lora_B)


#: How plain LoRA's A and B start, by name (``LoRAConfig.init``).
INITIALISERS = {"kaiming": kaiming_init, "gaussian": gaussian_init}

#: This library's name for each of peft's init_lora_weights values that only draws A (False, peft's random B
#: for tests, reads as kaiming); a variant that sets A and B itself (PiSSA) is selected by its own value.
PEFT_INITS = {True: "kaiming", False: "kaiming", None: "kaiming", "gaussian": "gaussian"}


class Variant:
    """One way of computing a LoRA layer, in the spirit of peft's ``LoraVariant``: its scale, how A and B
    (and any parameter it adds) start, its forward, and how it folds into the base weight and back. This
    base class is plain LoRA; a variant overrides the steps it changes and is registered in
    :data:`VARIANTS` (dora.py adds DoRA, pissa.py PiSSA)."""

    name = "lora"
    #: The peft ``LoraConfig`` fields that select this variant; ``to_peft``/``from_peft`` map through them.
    peft: dict = {}

    def scaling(self, r: int, alpha: float) -> float:
        """The factor s in ``s * B A``."""
        return alpha / r

    def init(self, layer: LoRALinear) -> None:
        """Set A and B: by the layer's ``init`` (``INITIALISERS``), B zero so the update starts at 0."""
        INITIALISERS[layer.init](layer)

    def forward(self, layer: LoRALinear, x: torch.Tensor) -> torch.Tensor:
        """The unmerged layer's output."""
        return layer.base(x) + layer.update(x)

    def merge(self, layer: LoRALinear) -> None:
        """W <- W + dW (under ``no_grad``)."""
        layer.base.weight += layer.delta_weight().to(layer.base.weight.dtype)

    def unmerge(self, layer: LoRALinear) -> None:
        """W <- W - dW: ``merge`` undone."""
        layer.base.weight -= layer.delta_weight().to(layer.base.weight.dtype)


class RsLoRA(Variant):
    """rsLoRA (Kalajdzievski, 2023): the scale ``alpha / sqrt(r)``, all else plain LoRA."""

    name, peft = "rslora", {"use_rslora": True}

    def scaling(self, r: int, alpha: float) -> float:
        return alpha / math.sqrt(r)


#: Every variant by name (``LoRAConfig.variant``); a variant module registers its own.
VARIANTS: dict[str, Variant] = {"lora": Variant(), "rslora": RsLoRA()}
#: peft's value for each field a variant sets, when no variant sets it.
PEFT_PLAIN = {"use_rslora": False, "use_dora": False}


@dataclass
class LoRAConfig:
    """Where and how to add LoRA. ``layers=None`` adapts every encoder layer; ``trainable`` names
    modules that stay fully trainable (e.g. the new classification head)."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("query", "value")  # names, or one pattern (a str; see matches)
    layers: list[int] | None = None
    init: str = "kaiming"
    trainable: tuple[str, ...] = ("classifier",)
    variant: str = "lora"  # a name in VARIANTS: lora, rslora, dora, pissa

    def __post_init__(self) -> None:
        _check_hparams(self.r, self.alpha, self.dropout, self.init, self.variant)
        # a single name is one module, not its letters
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as e:
                raise UsageError(
                    f"target_modules={self.target_modules!r} is not a valid pattern ({e})."
                ) from None
            if self.layers is not None:
                raise UsageError(
                    "target_modules is a pattern, which (as in peft) names the layers itself; drop layers= "
                    "or give target_modules as a tuple of names."
                )
        else:
            self.target_modules = tuple(self.target_modules)
        trainable = (self.trainable,) if isinstance(self.trainable, str) else self.trainable
        self.trainable = tuple(dict.fromkeys(trainable))
        if not self.target_modules:
            raise UsageError(
                "target_modules is empty; name the Linear layers to adapt, e.g. ('query', 'value')."
            )
        if self.layers is not None:
            self.layers = sorted(set(int(i) for i in self.layers))

    @property
    def scaling(self) -> float:
        """The factor s in ``s * B A`` (``alpha / r``; the variant may change it)."""
        return VARIANTS[self.variant].scaling(self.r, self.alpha)

    def to_peft(
        self, task_type: str = "SEQ_CLS", base_model: str | None = None, inference_mode: bool = False
    ) -> dict:
        """The same adapter as peft's ``LoraConfig`` fields (``peft.LoraConfig(**config.to_peft())``)."""
        return {
            "peft_type": "LORA",
            "task_type": task_type,
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules
            if isinstance(self.target_modules, str)
            else list(self.target_modules),
            "layers_to_transform": self.layers,
            "layers_pattern": "layer" if self.layers is not None else None,
            "init_lora_weights": True if self.init == "kaiming" else self.init,
            "modules_to_save": list(self.trainable) or None,
            "bias": "none",
            "fan_in_fan_out": False,
            **PEFT_PLAIN,
            **VARIANTS[self.variant].peft,
            "inference_mode": inference_mode,
        }

    @classmethod
    def from_peft(cls, c: dict) -> LoRAConfig:
        """Read peft's ``adapter_config.json`` fields (a list of target modules, not a regex). The variant is
        the one whose ``peft`` fields the config sets; a combination of variants, or an initialisation this
        library lacks (e.g. ``olora``, which changes the base weights), is refused."""
        chosen = [n for n, v in VARIANTS.items() if v.peft and all(c.get(k) == x for k, x in v.peft.items())]
        if len(chosen) > 1:
            raise UsageError(
                f"The adapter combines the variants {' and '.join(chosen)}; this library runs one."
            )
        variant = chosen[0] if chosen else "lora"
        init = c.get("init_lora_weights", True)
        if "init_lora_weights" in VARIANTS[variant].peft:
            init = True
        elif init not in PEFT_INITS:
            choices = [
                *PEFT_INITS,
                *(v.peft["init_lora_weights"] for v in VARIANTS.values() if "init_lora_weights" in v.peft),
            ]
            raise UsageError(
                f"init_lora_weights={init!r} is not one of this library's initialisations "
                f"({', '.join(map(repr, choices))})."
            )
        layers = c.get("layers_to_transform")
        return cls(
            r=c["r"],
            alpha=c["lora_alpha"],
            dropout=c.get("lora_dropout", 0.0),
            target_modules=c["target_modules"],
            layers=[layers] if isinstance(layers, int) else layers,
            init=PEFT_INITS[init],
            trainable=tuple(c.get("modules_to_save") or ()),
            variant=variant,
        )


@dataclass
class LoRASummary:
    """What ``apply_lora`` did: the wrapped Linear layers and the modules left trainable."""

    wrapped: list[str] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"LoRA on {len(self.wrapped)} Linear layers; fully trainable: "
            f"{', '.join(self.trainable) or 'none'}"
        )


_LAYER_INDEX = re.compile(r"\.layers?\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The encoder-layer index in a module name such as ``bert.encoder.layer.3.attention.self.query``."""
    m = _LAYER_INDEX.search(f".{name}.")
    return int(m.group(1)) if m else None


def matches(name: str, keys: tuple[str, ...] | str) -> bool:
    """peft's rule, used everywhere a module is picked: a tuple of keys matches a module whose dotted name
    equals one or ends with ``.key`` (whole components: ``query`` never matches ``...key_query``); a str
    is a pattern the whole name must match (``re.fullmatch``), for sets a suffix cannot express, such as
    the feed-forward layers without attention's output (:data:`FFN`)."""
    if isinstance(keys, str):
        return re.fullmatch(keys, name) is not None
    return any(name == k or name.endswith(f".{k}") for k in keys)


#: BERT's two feed-forward matrices in every layer, not the attention output's ``attention.output.dense``.
FFN = r".*\.layer\.\d+\.(intermediate|output)\.dense"


def train_only(model: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """Freeze ``model`` except the modules matching ``names`` (e.g. the head, for head-only training)."""
    model.requires_grad_(False)
    for name, m in model.named_modules():
        if matches(name, names):
            m.requires_grad_(True)
    return model


def num_layers(model: nn.Module) -> int:
    """How many encoder layers the model has."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if n is None:
        n = 1 + max((i for i in map(layer_index, dict(model.named_modules())) if i is not None), default=-1)
    return n


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """All LoRA-wrapped layers of a model, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, config: LoRAConfig) -> LoRASummary:
    """Wrap the matching ``nn.Linear`` layers of ``model`` in place and freeze all else but
    ``config.trainable``. Returns a summary of what was wrapped."""
    if lora_layers(model):
        raise UsageError(
            "This model already has LoRA layers; call merge_lora(model) first, "
            "or start again from the base model."
        )
    n = num_layers(model)
    if config.layers is not None and any(not 0 <= i < n for i in config.layers):
        raise UsageError(
            f"Layer indices {config.layers} out of range: this model has {n} layers (0..{n - 1})."
        )
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and matches(name, config.target_modules)
        and (config.layers is None or layer_index(name) in config.layers)
    ]
    if not targets:
        if isinstance(config.target_modules, str):
            raise UsageError(
                f"No nn.Linear matched target_modules={config.target_modules!r}, a pattern the whole module "
                "name must match (peft's rule for a str); give names as a tuple, e.g. ('query',), or a "
                r"pattern such as r'.*\.query'."
            )
        raise UsageError(
            f"No nn.Linear matched target_modules={list(config.target_modules)}; "
            "print(model) to see the module names (BERT uses query, key, value, dense)."
        )
    names = [name for name, _ in model.named_modules()]
    unmatched = [k for k in config.trainable if not any(matches(name, (k,)) for name in names)]
    if any(k in CLASSIFIER_NAMES and k not in unmatched for k in config.trainable):  # peft lists both names
        unmatched = [k for k in unmatched if k not in CLASSIFIER_NAMES]
    if unmatched:
        raise UsageError(
            f"trainable={list(config.trainable)}: no module is named {unmatched[0]!r}; print(model) to see "
            "the names (BERT's head: classifier, pooler)."
        )
    model.requires_grad_(False)
    summary = LoRASummary()
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(
            parent,
            child,
            LoRALinear(linear, config.r, config.alpha, config.dropout, config.init, config.variant),
        )
        summary.wrapped.append(name)
    for name, m in model.named_modules():
        if config.trainable and matches(name, config.trainable) and not isinstance(m, LoRALinear):
            m.requires_grad_(True)
            summary.trainable.append(name)

    model.lora_config = config
    return summary


def _unwrap(model: nn.Module, merge: bool) -> nn.Module:
    for name, layer in lora_layers(model).items():
        layer.merge() if merge else layer.unmerge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRA layer with a plain ``nn.Linear`` holding W + dW (zero inference overhead)."""
    return _unwrap(model, merge=True)


def remove_lora(model: nn.Module) -> nn.Module:
    """Take the adapters out again: every LoRA layer becomes its original ``nn.Linear`` (W unchanged)."""
    return _unwrap(model, merge=False)
