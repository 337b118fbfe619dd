"""DoRA (Liu et al., 2024): LoRA's update, then each output row's weight re-normalised to a learned
magnitude: ``W' = m * (W + s B A) / ||W + s B A||_row``, the norm held constant in backprop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lora import VARIANTS, LoRALinear


class DoRALinear(LoRALinear):
    """A LoRA layer plus a trainable magnitude per output (``lora_magnitude_vector``, peft's name)."""

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        init: str = "kaiming",
        rslora: bool = False,
    ) -> None:
        super().__init__(base, r, alpha, dropout, init, rslora)
        self.lora_magnitude_vector = nn.Parameter(base.weight.detach().norm(dim=1).clone())
        self.register_buffer("merged_scale", torch.ones_like(self.lora_magnitude_vector))

    def magnitude_scale(self) -> torch.Tensor:
        """m / ||W + dW||_row, with the norm detached (the DoRA paper's memory-saving choice)."""
        norm = (self.base.weight + self.delta_weight().detach()).norm(dim=1).detach()
        return self.lora_magnitude_vector / norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``b + scale * (W + s B A) dropout(x)``: the frozen ``W x`` plus ``(scale - 1) W dropout(x)``,
        so with dropout the base weight is applied twice (once to ``x``, once to the dropped ``x``); without
        dropout the two products are of the same input."""
        if self.merged:
            return self.base(x)
        x_d, scale = self.dropout(x), self.magnitude_scale()
        lora = F.linear(F.linear(x_d, self.lora_A) * self.scaling, self.lora_B)
        return self.base(x) + (scale - 1) * F.linear(x_d, self.base.weight) + scale * lora

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            scale = self.magnitude_scale()
            self.base.weight.copy_(scale[:, None] * (self.base.weight + self.delta_weight()))
            self.merged_scale.copy_(scale)
            self.merged.fill_(True)

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight.copy_(self.base.weight / self.merged_scale[:, None] - self.delta_weight())
            self.merged.fill_(False)


VARIANTS["dora"] = DoRALinear
