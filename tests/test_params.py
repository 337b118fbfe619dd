"""Exact parameter counts, checked against hand-derived values."""

import pytest

from lora_tutorial import LoRAConfig, apply_lora, count_parameters
from lora_tutorial.models import load_model


@pytest.fixture(scope="module")
def bert_base():
    return load_model("bert-base-random")


@pytest.mark.parametrize("r, lora", [(16, 589_824), (4, 147_456)])
def test_bert_base_architecture(bert_base, r, lora):
    import copy

    model = copy.deepcopy(bert_base)
    assert count_parameters(model).total == 109_483_778
    apply_lora(model, LoRAConfig(r=r))
    c = count_parameters(model)
    assert c.lora == lora == 12 * 2 * r * (768 + 768)
    assert c.head == 768 * 2 + 2
    assert c.base == 109_483_778
    assert c.total == 109_483_778 + lora
    assert c.trainable == lora + 1538
    if r == 16:
        assert round(c.lora_percent, 3) == 0.539


def test_embedded_minilm(minilm):
    apply_lora(minilm, LoRAConfig(r=16))
    c = count_parameters(minilm)
    assert c.lora == 147_456 == 6 * 2 * 16 * (384 + 384)
    table = c.to_frame()
    assert table.loc["total", "parameters"] == c.total
    assert table.loc["LoRA (A, B)", "% of total"] == round(100 * c.lora / c.total, 3)


def test_full_model_is_all_trainable(tiny):
    c = count_parameters(tiny)
    assert c.lora == 0
    assert c.frozen == 0
    assert c.trainable_percent == 100
