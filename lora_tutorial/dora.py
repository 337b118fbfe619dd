"""DoRA (Liu et al., 2024): LoRA's update, then each output row's weight re-normalised to a learned
magnitude: ``W' = m * (W + s B A) / ||W + s B A||_row``, the norm held constant in backprop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lora import VARIANTS, LoRALinear, Variant


class DoRA(Variant):
    """LoRA plus a trainable magnitude per output row (``lora_magnitude_vector``, peft's name)."""

    name, peft = "dora", {"use_dora": True}

    def init(self, layer: LoRALinear) -> None:
        """A and B as plain LoRA's; the magnitude starts at the base weight's row norms, so the layer starts
        as the base layer."""
        super().init(layer)
        norm = layer.base.weight.detach().norm(dim=1)
        if hasattr(layer, "lora_magnitude_vector"):
            layer.lora_magnitude_vector.data.copy_(norm)
        else:
            layer.lora_magnitude_vector = nn.Parameter(norm.clone())
            layer.register_buffer("merged_scale", torch.ones_like(norm))

    @staticmethod
    def magnitude_scale(layer: LoRALinear) -> torch.Tensor:
        """m / ||W + dW||_row, with the norm detached (the DoRA paper's memory-saving choice)."""
        norm = (layer.base.weight + layer.delta_weight().detach()).norm(dim=1).detach()
        return layer.lora_magnitude_vector / norm

    def forward(self, layer: LoRALinear, x: torch.Tensor) -> torch.Tensor:
        """``b + scale * (W + s B A) dropout(x)``: the frozen ``W x`` plus ``(scale - 1) W dropout(x)``,
        so with dropout the base weight is applied twice (once to ``x``, once to the dropped ``x``); without
        dropout the two products are of the same input."""
        x_d, scale = layer.dropout(x), self.magnitude_scale(layer)
        lora = F.linear(F.linear(x_d, layer.lora_A) * layer.scaling, layer.lora_B)
        return layer.base(x) + (scale - 1) * F.linear(x_d, layer.base.weight) + scale * lora

    def merge(self, layer: LoRALinear) -> None:
        scale = self.magnitude_scale(layer)
        layer.base.weight.copy_(scale[:, None] * (layer.base.weight + layer.delta_weight()))
        layer.merged_scale.copy_(scale)

    def unmerge(self, layer: LoRALinear) -> None:
        layer.base.weight.copy_(layer.base.weight / layer.merged_scale[:, None] - layer.delta_weight())


VARIANTS["dora"] = DoRA()
