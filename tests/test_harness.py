"""The benchmark harness: the operator profile accounts for the whole profiled step."""

import torch

from lora_tutorial.benchmarks.harness import op_profile
from lora_tutorial.models import load_model


def test_op_profile_keeps_the_top_operators_and_the_rest_together():
    model = load_model("tiny")
    batch = {
        "input_ids": torch.randint(0, 100, (4, 16)),
        "attention_mask": torch.ones(4, 16, dtype=torch.long),
        "labels": torch.tensor([0, 1, 0, 1]),
    }
    profile = op_profile(model, batch, steps=2, top=5)
    assert len(profile) == 6
    top = list(profile.values())[:5]
    assert top == sorted(top, reverse=True)
    assert "other operators" in profile
    assert all(ms >= 0 for ms in profile.values())
    assert profile["other operators"] > 0  # a BERT step has far more than five kinds of operator
