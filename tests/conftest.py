import copy
import random

import pytest
from transformers.utils import logging

from lora_tutorial.models import load_model, load_tokenizer

logging.set_verbosity_error()


@pytest.fixture(scope="session")
def _tiny():
    return load_model("tiny", seed=0).eval()


@pytest.fixture(scope="session")
def _minilm():
    return load_model("minilm", seed=0).eval()


@pytest.fixture
def tiny(_tiny):
    """A fresh copy of a small random BertForSequenceClassification (2 layers)."""
    return copy.deepcopy(_tiny)


@pytest.fixture
def minilm(_minilm):
    """A fresh copy of the embedded all-MiniLM-L6-v2 with a new 2-class head."""
    return copy.deepcopy(_minilm)


@pytest.fixture(scope="session")
def batch():
    tok = load_tokenizer("minilm")
    return dict(
        tok(
            ["a gripping, funny film", "dull and far too long to sit through", "fine"],
            padding=True,
            return_tensors="pt",
        )
    )


POS, NEG = ["good", "great", "superb", "lovely", "moving"], ["bad", "awful", "dull", "boring", "poor"]
FILLER = ["the", "film", "a", "plot", "was", "acting", "very", "story", "its", "and"]


@pytest.fixture(scope="session")
def learnable(tmp_path_factory):
    """A sentiment task a tiny model can learn in seconds: the label is which word list appears."""
    rng, folder = random.Random(0), tmp_path_factory.mktemp("toy")
    for split, n in (("train", 1024), ("validation", 256)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            words = rng.choices(FILLER, k=rng.randint(3, 12)) + [rng.choice(POS if label else NEG)]
            rng.shuffle(words)
            lines.append(f"{' '.join(words)}\t{label}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder
