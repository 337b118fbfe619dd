"""What training keeps in memory besides activations: weights, gradients and AdamW's two moments."""

from __future__ import annotations

import torch
from torch import nn


def bytes_of(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def training_state_bytes(model: nn.Module, batch: dict, lr: float = 1e-4) -> dict[str, int]:
    """Take one real AdamW step on ``batch`` and measure the bytes held by weights, gradients and
    optimizer state (activations are left out: they depend on the batch, not on the method)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    model(**batch).loss.backward()
    optimizer.step()
    sizes = {
        "weights": bytes_of(model.parameters()),
        "gradients": bytes_of(p.grad for p in trainable if p.grad is not None),
        "optimizer state": bytes_of(
            v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0
        ),
    }
    optimizer.zero_grad(set_to_none=True)
    return sizes | {"total": sum(sizes.values())}


def predicted_state_bytes(total: int, trainable: int, bytes_per_value: int = 4) -> dict[str, int]:
    """The same from the counts alone: weights for all parameters; a gradient and two AdamW moments
    (m and v) for each trainable one."""
    sizes = {
        "weights": total * bytes_per_value,
        "gradients": trainable * bytes_per_value,
        "optimizer state": 2 * trainable * bytes_per_value,
    }
    return sizes | {"total": sum(sizes.values())}
