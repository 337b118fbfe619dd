"""The study's experiments and profiles: every hyper-parameter of every run is stated here.

A run is a :class:`RunSpec`: a profile (model, data and optimiser settings shared by its runs), an
:class:`Experiment` (what is trained, at which learning rate, for how many epochs, on how many examples)
and a seed. An experiment's name is the short way to type it: ``lora-r16`` leaves the learning rate,
epochs and budget to the profile; once resolved against a profile the name says all of them,
``lora-r16-qv-e2@1e-3`` or ``lora-r8-qv-upper-e1-n20000@1e-3``, and parsing that name gives the same spec.

LoRA's scale ``s`` in ``s * B A`` follows one of three rules (``SCALING_RULES``): ``alpha = 2r``
(``s`` = 2 at every rank: the study's default), ``alpha / r`` with a fixed alpha (``-a32``: the LoRA
paper's), and ``alpha / sqrt(r)`` with a fixed alpha (``rslora-...-a8``). Two names that give the same
scale at the same rank are one run: ``lora-r16-qv-a32`` and ``rslora-r16-qv-a8`` are both ``lora-r16-qv``.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, replace

from ..errors import UsageError
from ..lora import FFN, VARIANTS, LoRAConfig

HEAD = ("classifier", "pooler")  # trained by every method (the embedded model's pooler was never trained)
#: The ranks the study compares (the reference study's).
RANKS = (1, 4, 8, 16, 32)
MODULE_SETS = {
    "q": ("query",),
    "v": ("value",),
    "qv": ("query", "value"),
    "qkvo": ("query", "key", "value", "attention.output.dense"),
    "qkvo-ffn": ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"),
    "ffn": FFN,  # the two feed-forward matrices only (a pattern: "output.dense" would match attention's too)
}  # qkvo-ffn: every linear layer of the encoder
ALL_LINEAR = "qkvo-ffn"
LORAPLUS_RATIO = 16.0  # LoRA+: B's learning rate over A's (Hayou et al., 2024)
#: B's learning rate over A's under each optimiser rule (AdamW over the trainable parameters in both).
OPTIMIZERS = {"adamw": 1.0, "loraplus": LORAPLUS_RATIO}
#: The layer variant (a name in ``lora.VARIANTS``) and the optimiser rule (``OPTIMIZERS``) that each first
#: word of a LoRA experiment's name selects. The name grammar is built from this table.
PREFIXES = {
    "lora": ("lora", "adamw"),
    "rslora": ("rslora", "adamw"),
    "dora": ("dora", "adamw"),
    "loraplus": ("lora", "loraplus"),
    "pissa": ("pissa", "adamw"),
}
VARIANT_NAMES = tuple(PREFIXES)  # plain LoRA, then the variants the study compares with it
HALVES = ("lower", "upper")  # the layer sets a name may give besides one layer (layer<i>)
#: What each kind's learning-rate sweep trains (on the ablation budget); the first three are the headline's.
SWEEP_BASES = {
    "full": "full",
    "lora": "lora-r16",
    f"lora-{ALL_LINEAR}": f"lora-r4-{ALL_LINEAR}",
    "rslora": "rslora-r16",
    "dora": "dora-r16",
    "loraplus": "loraplus-r16",
    "pissa": "pissa-r16",
    f"lora-r16-{ALL_LINEAR}": f"lora-r16-{ALL_LINEAR}",  # every linear layer at r = 16: the capacity question
}
#: The kinds the headline compares (full fine-tuning, LoRA on query and value, LoRA on every linear layer).
HEADLINE_KINDS = ("full", "lora", f"lora-{ALL_LINEAR}")
#: The scaling rules the rank study compares, by a reader's label, with the name words that select each.
SCALING_RULES = {
    "alpha = 2r": "lora-r{r}-qv",  # s = 2 at every rank
    "alpha / r, alpha = 32": "lora-r{r}-qv-a32",  # s = 32 / r (the LoRA paper; LoRA Without Regret)
    "alpha / sqrt(r), alpha = 8": "rslora-r{r}-qv-a8",  # s = 8 / sqrt(r) (rsLoRA)
}  # all three give s = 2 at r = 16, so the r = 16 runs belong to each
#: The rules whose rank curve is trained at each rank's own rate (``Profile.rank_lr``), on the full budget.
RANK_RULES = ("alpha = 2r", "alpha / r, alpha = 32")


@dataclass(frozen=True)
class Profile:
    """Model, data budget and optimisation settings shared by all runs of a profile. ``lr`` and ``epochs``
    give each kind of experiment (``Experiment.kind``) its rate and epochs: keys ``full``, ``head``, ``lora``
    (LoRA on any projections), ``lora-qkvo-ffn`` (LoRA on every linear layer) and the variants ``rslora``,
    ``dora``, ``loraplus``, each falling back to ``lora``."""

    name: str
    model: str
    batch_size: int
    lr: dict[str, float]
    epochs: dict[str, int]
    max_length: int = 128
    train_limit: int | None = None  # None: the full SST-2 training split
    eval_limit: int | None = None  # None: the full validation split
    lora_dropout: float = 0.1
    ablation_train_limit: int | None = None  # the layers/modules/variants suites' smaller budget
    ablation_epochs: int = 1
    sweep: dict[str, tuple[float, ...]] = field(default_factory=dict)  # learning rates tried, per kind
    sweep_seeds: tuple[int, ...] = (0, 1)  # the seeds a sweep compares (runs of other seeds: ignored)
    scaling_sweep: tuple[float, ...] = ()  # learning rates tried for every scaling rule and rank
    # per rule of RANK_RULES and rank, the rate its rank run trains at (what the scaling sweep chose);
    # a rule or rank without one: LoRA's rate (lr["lora"])
    rank_lr: dict[str, dict[int, float]] = field(default_factory=dict)
    weight_decay: float = 0.01  # AdamW's, on every matrix (not biases or LayerNorm weights)
    warmup_ratio: float = 0.06  # share of the steps over which the rate rises linearly, then falls to 0
    max_grad_norm: float = 1.0  # gradient clipping

    def fixed_settings(self, method: str) -> dict:
        """The settings every run of ``method`` shares in this profile (not part of an experiment's name):
        a stored run made with other values is stale."""
        out = {
            "model": self.model,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "eval_limit": self.eval_limit,
            "weight_decay": self.weight_decay,
            "warmup_ratio": self.warmup_ratio,
            "max_grad_norm": self.max_grad_norm,
        }
        return out | ({"lora_dropout": self.lora_dropout} if method == "lora" else {})


#: The profiles by name (``smoke``, ``cpu``, ``gpu``); every setting of their runs lives here.
PROFILES = {
    "smoke": Profile(
        "smoke",
        model="tiny",
        batch_size=32,
        lr={"full": 1e-3, "lora": 1e-2, "head": 1e-2},
        epochs={"full": 3, "lora": 3, "head": 3},
        max_length=64,
        train_limit=2048,
        eval_limit=256,
        lora_dropout=0.0,
        ablation_epochs=3,
    ),
    # Settings chosen on the validation split; how, and every run that chose them: the provenance appendix.
    "cpu": Profile(
        "cpu",
        model="minilm",
        batch_size=32,
        lr={
            "full": 1e-4,
            "lora": 1e-3,
            "lora-qkvo-ffn": 1e-3,
            "lora-r16-qkvo-ffn": 1e-3,  # its own sweep's choice (the same rate as r = 4's)
            "rslora": 1e-3,
            "dora": 1e-3,
            "loraplus": 3e-4,
            "pissa": 1e-3,
            "head": 1e-3,
        },
        epochs={"full": 2, "lora": 2, "head": 1},  # the headline's methods alike: a gap is the method's
        ablation_train_limit=20_000,
        sweep={
            "full": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3),
            "lora": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
            "lora-qkvo-ffn": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
            "lora-r16-qkvo-ffn": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
            # the variants, each at its own rate: three rates around where its scale puts its best one,
            # widened by one where the best sat at the edge
            "rslora": (1e-4, 3e-4, 1e-3, 3e-3),  # alpha / sqrt(r): 4x LoRA's scale at r = 16
            "dora": (3e-4, 1e-3, 3e-3, 1e-2),
            "loraplus": (1e-4, 3e-4, 1e-3),  # A's rate; B's is 16x
            "pissa": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3),  # 3e-3 added: the best sat at the edge
        },
        scaling_sweep=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2),  # one grid for every rule and rank: no rule favoured
        rank_lr={
            "alpha = 2r": {1: 3e-3, 4: 3e-3, 8: 3e-3, 16: 1e-3, 32: 1e-3},
            "alpha / r, alpha = 32": {1: 1e-3, 4: 1e-3, 8: 1e-3, 16: 1e-3, 32: 3e-3},
        },
    ),
    "gpu": Profile(
        "gpu",
        model="bert-base-uncased",
        batch_size=32,
        lr={"full": 2e-5, "lora": 5e-4, "head": 1e-3},  # untuned until its sweep has run (see choose)
        epochs={"full": 3, "lora": 3, "head": 3},
        ablation_train_limit=20_000,
        sweep={  # the cpu profile's grids: the same rule picks every method's rate
            "full": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3),
            "lora": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
            "lora-qkvo-ffn": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
            "lora-r16-qkvo-ffn": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
        },
        scaling_sweep=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    ),
}


def profile_named(name: str) -> Profile:
    """The profile registered under ``name`` (the command line's ``--profile``)."""
    if name not in PROFILES:
        raise UsageError(f"Unknown profile {name!r}; choose one of {sorted(PROFILES)}.")
    return PROFILES[name]


def lr_text(lr: float) -> str:
    """A learning rate as a name writes it: ``1e-3``, ``2.5e-5``."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _alternatives(words) -> str:
    return "|".join(sorted(map(re.escape, words), key=len, reverse=True))  # longest first: qkvo-ffn, qkvo


_NAME = re.compile(
    rf"(?:(full|head)|({_alternatives(PREFIXES)})-r(\d+)(?:-({_alternatives(MODULE_SETS)}))?"
    rf"(?:-({_alternatives(HALVES)}|layer\d+))?(?:-a(\d+(?:\.\d+)?))?)(?:-e(\d+))?(?:-n(\d+))?(?:@(.+))?"
)
#: How an experiment name is written (the error for an unknown name quotes it); built from the same tables.
GRAMMAR = (
    f"full | head | lora-r<r>[{'|'.join(f'-{t}' for t in MODULE_SETS)}][{'|'.join(f'-{h}' for h in HALVES)}"
    "|-layer<i>][-a<alpha>][-e<epochs>][-n<examples>][@<lr>] "
    f"({', '.join(f'{p}-' for p in PREFIXES if p != 'lora')} for lora-; no -a: alpha = 2r), "
    "e.g. lora-r16, lora-r8-layer3, lora-r4-a32, full@5e-5, lora-r8-upper-n20000"
)


@dataclass(frozen=True)
class Experiment:
    """What one run trains: ``full``, ``head`` (head only) or ``lora``; for LoRA its rank, targets (a key of
    ``MODULE_SETS``), layers, layer variant, scaling (``alpha``) and optimiser rule; and the learning rate,
    epochs and number of training examples (``None``: the profile's)."""

    method: str
    r: int | None = None
    target: str = "qv"
    layers: str | int = "all"  # "all", "lower", "upper" or one layer's index
    variant: str = "lora"  # the layer (lora.VARIANTS): lora, rslora (alpha/sqrt r), dora, pissa (SVD init)
    optimizer: str = "adamw"  # OPTIMIZERS: adamw, or loraplus (B learns 16x faster)
    alpha: float | None = (
        None  # None: alpha = 2r; else a fixed alpha (the scale is alpha/r, rslora alpha/sqrt r)
    )
    lr: float | None = None
    epochs: int | None = None
    train_examples: int | None = (
        None  # None: the profile's training set (its train_limit, else the full split)
    )

    def __post_init__(self) -> None:
        """Checks the words, then gives one canonical form per run: a fixed alpha that gives the scale
        alpha = 2r gives becomes None (and rsLoRA at that scale is plain LoRA)."""
        if self.method != "lora":
            return
        if (self.variant, self.optimizer) not in PREFIXES.values() or self.target not in MODULE_SETS:
            raise UsageError(
                f"No LoRA experiment has variant={self.variant!r}, optimizer={self.optimizer!r}, "
                f"target={self.target!r}; use {GRAMMAR}."
            )
        if self.alpha is None:
            return
        if self.alpha <= 0 or not math.isfinite(self.alpha):
            raise UsageError(f"LoRA alpha must be a positive number, got {self.alpha!r}.")
        if math.isclose(VARIANTS[self.variant].scaling(self.r, self.alpha), 2.0):
            object.__setattr__(self, "alpha", None)
            if self.variant == "rslora":
                object.__setattr__(self, "variant", "lora")

    @property
    def prefix(self) -> str | None:
        """The word a LoRA name starts with (``PREFIXES``); None for full and head-only training."""
        if self.method != "lora":
            return None
        return next(p for p, pair in PREFIXES.items() if pair == (self.variant, self.optimizer))

    @property
    def scaling_rule(self) -> str | None:
        """How the scale of ``s * B A`` is set: ``alpha = 2r``, ``alpha / r`` or ``alpha / sqrt(r)`` (fixed
        alpha); None for full and head-only training."""
        if self.method != "lora":
            return None
        if self.alpha is None:
            return "alpha = 2r" if self.variant != "rslora" else "alpha = 2r, / sqrt(r)"
        return "alpha / sqrt(r)" if self.variant == "rslora" else "alpha / r"

    @property
    def lora_alpha(self) -> float | None:
        """The alpha given to LoRAConfig (the fixed one, else 2r)."""
        if self.method != "lora":
            return None
        return self.alpha if self.alpha is not None else 2 * self.r

    @classmethod
    def parse(cls, name: str) -> Experiment:
        """The experiment a name describes (see :data:`GRAMMAR`)."""
        m = _NAME.fullmatch(name)
        try:
            lr = float(m.group(9)) if m and m.group(9) else None
        except ValueError:
            lr = None
            m = None
        if (
            not m
            or (m.group(3) and int(m.group(3)) <= 0)
            or (lr is not None and not (0 < lr < math.inf))
            or m.group(7) == "0"
            or m.group(8) == "0"
            or (m.group(6) and float(m.group(6)) <= 0)
        ):
            raise UsageError(f"Unknown experiment {name!r}; use {GRAMMAR}.")
        epochs, examples = (int(g) if g else None for g in m.group(7, 8))
        if m.group(1):
            return cls(m.group(1), lr=lr, epochs=epochs, train_examples=examples)
        variant, optimizer = PREFIXES[m.group(2)]
        layers = m.group(5) or "all"
        return cls(
            "lora",
            r=int(m.group(3)),
            target=m.group(4) or "qv",
            layers=int(layers[5:]) if layers.startswith("layer") else layers,
            variant=variant,
            optimizer=optimizer,
            alpha=float(m.group(6)) if m.group(6) else None,
            lr=lr,
            epochs=epochs,
            train_examples=examples,
        )

    @property
    def name(self) -> str:
        """The name that parses back to this experiment."""
        parts = [self.method if self.method != "lora" else f"{self.prefix}-r{self.r}-{self.target}"]
        if self.method == "lora" and self.layers != "all":
            parts.append(self.layers if isinstance(self.layers, str) else f"layer{self.layers}")
        if self.method == "lora" and self.alpha is not None:
            parts.append(f"a{self.alpha:g}")
        if self.epochs is not None:
            parts.append(f"e{self.epochs}")
        if self.train_examples is not None:
            parts.append(f"n{self.train_examples}")
        return "-".join(parts) + (f"@{lr_text(self.lr)}" if self.lr is not None else "")

    @property
    def kind(self) -> str:
        """Which of a profile's ``lr``, ``epochs`` and ``sweep`` entries applies: full, head, lora,
        lora-qkvo-ffn (plain LoRA on every linear layer), or the variant's word (rslora, dora, loraplus,
        pissa): each is tuned on its own."""
        if self.method != "lora":
            return self.method
        if self.prefix != "lora":
            return self.prefix
        return f"lora-{ALL_LINEAR}" if self.target == ALL_LINEAR else "lora"

    @property
    def base(self) -> str:
        """The name without learning rate, epochs and budget, which a sweep varies around it."""
        return replace(self, lr=None, epochs=None, train_examples=None).name

    @property
    def sweep_kind(self) -> str:
        """The ``SWEEP_BASES`` key whose experiment this is (at any rate, epochs and budget), else its
        :attr:`kind`; so LoRA on every linear layer at r = 16 is tuned apart from r = 4."""
        return _sweep_kinds(tuple(SWEEP_BASES.items())).get(self.base, self.kind)

    @property
    def lr_ratio_b(self) -> float:
        """B's learning rate over A's (LoRA+)."""
        return OPTIMIZERS[self.optimizer]

    def resolve(self, profile: Profile) -> Experiment:
        """The same experiment with the profile's learning rate, epochs and budget filled in."""

        def pick(table: dict):  # the most specific entry: this sweep's kind, the kind, the method
            return table.get(self.sweep_kind, table.get(self.kind, table.get(self.method)))

        return replace(
            self,
            lr=self.lr if self.lr is not None else pick(profile.lr),
            epochs=self.epochs if self.epochs is not None else pick(profile.epochs),
            train_examples=self.train_examples if self.train_examples is not None else profile.train_limit,
        )

    def lora_config(self, num_layers: int, dropout: float) -> LoRAConfig:
        """The LoRAConfig for a model with ``num_layers`` layers (alpha: see :attr:`lora_alpha`)."""
        half = num_layers // 2
        layers = {"all": None, "lower": list(range(half)), "upper": list(range(half, num_layers))}.get(
            self.layers, [self.layers]
        )
        if layers is not None and not all(0 <= i < num_layers for i in layers):
            raise UsageError(
                f"Experiment {self.name!r} adapts layer {self.layers}, but the model has {num_layers} "
                f"layers (0..{num_layers - 1}); pick a layer in that range."
            )
        return LoRAConfig(
            r=self.r,
            alpha=self.lora_alpha,
            dropout=dropout,
            target_modules=MODULE_SETS[self.target],
            layers=layers,
            trainable=HEAD,
            variant=self.variant,
        )


@functools.cache
def _sweep_kinds(bases: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """``SWEEP_BASES`` (as its items) turned around: each sweep's base name -> its kind, parsed once per
    content of the table."""
    return {Experiment.parse(b).base: k for k, b in bases}


@dataclass(frozen=True)
class RunSpec:
    """One run: an experiment resolved against a profile, and a seed. ``label`` is the short name a suite
    or a user typed for it (tables show it); it is not part of the run's identity."""

    profile: Profile
    experiment: Experiment
    seed: int
    label: str = ""

    @property
    def stem(self) -> str:
        """The stored file's name without extension; it says which experiment, settings and seed it holds."""
        return run_stem(self.experiment.name, self.seed)


def run_stem(experiment: str, seed: int) -> str:
    """The one rule for a run's file name (without extension): ``lora-r16-qv-e2@1e-3__seed0``."""
    return f"{experiment}__seed{seed}"


def spec(profile: Profile, name: str, seed: int, label: str | None = None) -> RunSpec:
    """A run spec from a typed experiment name, resolved against ``profile``."""
    return RunSpec(profile, Experiment.parse(name).resolve(profile), seed, label or name)


def ablation(profile: Profile, name: str) -> str:
    """A name on the profile's ablation budget (its smaller training set and epochs)."""
    exp = replace(
        Experiment.parse(name), epochs=profile.ablation_epochs, train_examples=profile.ablation_train_limit
    )
    return exp.name


#: The suites trained on a profile's ablation budget, with their experiments by name (``{i}`` once per
#: layer). A new suite is one entry here, such as FFN-only LoRA at three ranks.
ABLATIONS = {
    "layers": ("lora-r8-qv", "lora-r8-lower", "lora-r8-upper", "lora-r8-layer{i}"),
    "modules": ("lora-r8-q", "lora-r8-v", "lora-r8-qv", "lora-r8-qkvo", "lora-r8-qkvo-ffn"),
    # each variant at the rate its own sweep chose
    "variants": tuple(f"{v}-r16-qv" for v in VARIANT_NAMES),
}


def rank_runs(profile: Profile, one_rate: bool = False) -> list[tuple[str, str]]:
    """The rank curve of each rule in ``RANK_RULES``, each rank at its own rate (``Profile.rank_lr``), as
    ``(label, name)`` pairs: ``lora-r8`` for alpha = 2r, ``lora-r8-a32`` for alpha / r; the r = 16 run, the
    same under both rules, once. ``one_rate``: every rank at LoRA's one rate instead (``lora-r8@1e-3``), the
    runs that say what retuning each rank changed."""
    out: dict[str, str] = {}
    for rule in RANK_RULES:
        for r in RANKS:
            exp = Experiment.parse(SCALING_RULES[rule].format(r=r))
            lr = None if one_rate else profile.rank_lr.get(rule, {}).get(r)
            label = f"lora-r{r}" + (f"-a{exp.alpha:g}" if exp.alpha is not None else "")
            out.setdefault(
                replace(exp, lr=lr).name, label + (f"@{lr_text(profile.lr['lora'])}" if one_rate else "")
            )
    return [(label, name) for name, label in out.items()]


def suites(profile: Profile, num_layers: int) -> dict[str, list[tuple[str, str]]]:
    """Named groups of experiments as ``(label, name)`` pairs: headline, rank (each rank at its own rate),
    rank-one-rate (every rank at LoRA's rate, for each rule of ``RANK_RULES``), capacity (every linear
    layer at r = 4 and 16), the ablations (``ABLATIONS``, on the profile's ablation budget), the
    learning-rate sweeps (``sweep``) and the scaling rules' sweeps (``scaling``)."""

    def ab(names):
        each = [n.format(i=i) for n in names for i in (range(num_layers) if "{i}" in n else [None])]
        return [(n, ablation(profile, n)) for n in each]

    sweep = [
        (f"{base}@{lr_text(lr)}", ablation(profile, f"{base}@{lr_text(lr)}"))
        for kind, base in SWEEP_BASES.items()
        for lr in profile.sweep.get(kind, ())
    ]
    scaling = [
        (
            Experiment.parse(f"{rule.format(r=r)}@{lr_text(lr)}").name,
            ablation(profile, f"{rule.format(r=r)}@{lr_text(lr)}"),
        )
        for rule in SCALING_RULES.values()
        for r in RANKS
        for lr in profile.scaling_sweep
    ]
    return {
        "headline": [(n, n) for n in ("full", "lora-r16", f"lora-r4-{ALL_LINEAR}")],
        "rank": rank_runs(profile),
        "rank-one-rate": rank_runs(profile, one_rate=True),
        "capacity": [(n, n) for n in (f"lora-r4-{ALL_LINEAR}", f"lora-r16-{ALL_LINEAR}")],
        **{name: ab(names) for name, names in ABLATIONS.items()},
        "sweep": sweep,
        "scaling": list(dict.fromkeys(scaling)),  # the r = 16 runs, shared by every rule, once
    }


def expand(profile: Profile, names: list[str], num_layers: int) -> list[tuple[str, str]]:
    """``(label, name)`` pairs for names and suite names (``all``: every suite), duplicates dropped."""
    table = suites(profile, num_layers)
    out: list[tuple[str, str]] = []
    for name in names:
        if name == "all":
            out += [p for s in table.values() for p in s]
        elif name in table:
            out += table[name]
        elif re.fullmatch(r"[a-z]+", name) and name not in ("full", "head"):
            raise UsageError(f"Unknown suite {name!r}; choose one of {sorted(table) + ['all']}.")
        else:
            Experiment.parse(name)
            out.append((name, name))
    return list(dict.fromkeys(out))
