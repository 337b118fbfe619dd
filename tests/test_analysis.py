"""Adapter analysis: the update read back from disk, and the subspace similarity's defining properties."""

import torch
from helpers import randomize_lora

from lora_tutorial import LoRAConfig, apply_lora, lora_layers, save_adapter
from lora_tutorial.analysis import delta_weights, subspace_similarity


def test_delta_weights_from_disk(tiny, tmp_path):
    apply_lora(tiny, LoRAConfig(r=4, alpha=12, variant="rslora"))
    randomize_lora(tiny)
    save_adapter(tiny, tmp_path)
    deltas = delta_weights(tmp_path)
    assert set(deltas) == set(lora_layers(tiny))
    for name, layer in lora_layers(tiny).items():
        torch.testing.assert_close(deltas[name], layer.delta_weight().detach())


def test_subspace_similarity_properties():
    torch.manual_seed(0)
    A = torch.randn(8, 64)
    assert abs(subspace_similarity(A, A, 8, 8) - 1) < 1e-9
    assert abs(subspace_similarity(torch.randn(4, 8) @ A, A, 4, 8) - 1) < 1e-9  # rows inside A's span
    B = torch.randn(8, 64)
    B = B - (B @ torch.linalg.pinv(A)) @ A  # orthogonal to A's row space
    assert subspace_similarity(A, B, 8, 8) < 1e-9
    assert 0 < subspace_similarity(A, torch.randn(8, 64), 8, 8) < 0.5
