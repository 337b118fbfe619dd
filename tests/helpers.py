"""Shared test helpers."""

import torch


def randomize_lora(model, seed=1):
    """Give every LoRA B (and the head) non-zero values so that the update actually matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B") or p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
