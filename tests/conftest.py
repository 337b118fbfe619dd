import copy

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
    return dict(tok(["a gripping, funny film", "dull and far too long to sit through", "fine"],
                    padding=True, return_tensors="pt"))
