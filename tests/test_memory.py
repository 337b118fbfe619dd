"""Measured training-state bytes agree with the count-based prediction."""

import torch

from lora_tutorial import LoRAConfig, apply_lora, count_parameters
from lora_tutorial.benchmarks.memory import predicted_state_bytes, training_state_bytes


def test_measured_matches_prediction(tiny, minilm, batch):
    labelled = batch | {"labels": torch.tensor([1, 0, 1])}
    full = training_state_bytes(tiny, labelled)
    c = count_parameters(tiny)
    assert full == predicted_state_bytes(c.total, c.trainable)
    apply_lora(minilm, LoRAConfig(r=16))
    lora = training_state_bytes(minilm, labelled)
    c = count_parameters(minilm)
    assert lora == predicted_state_bytes(c.total, c.trainable)
    assert lora["optimizer state"] == 8 * (147_456 + 770)
