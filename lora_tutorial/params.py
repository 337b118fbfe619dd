"""Counting parameters: total, trainable, and what LoRA adds."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from torch import nn

from .lora import is_lora_param


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of a model. ``lora`` are adapter weights, ``head`` every other trainable
    weight (the classifier, say), ``frozen`` the rest. ``base`` is the model without adapters."""

    lora: int
    head: int
    frozen: int

    @property
    def total(self) -> int:
        return self.lora + self.head + self.frozen

    @property
    def trainable(self) -> int:
        return self.lora + self.head

    @property
    def base(self) -> int:
        return self.head + self.frozen

    @property
    def trainable_percent(self) -> float:
        return 100 * self.trainable / self.total

    @property
    def lora_percent(self) -> float:
        """LoRA parameters as a percentage of the model they adapt (how papers quote it)."""
        return 100 * self.lora / self.base

    def to_frame(self) -> pd.DataFrame:
        """A table a chapter can print: one row per group, with counts and percentages of the total."""
        rows = {
            "LoRA (A, B)": self.lora,
            "trainable (head)": self.head,
            "frozen": self.frozen,
            "total": self.total,
        }
        df = pd.DataFrame({"parameters": rows})
        df["% of total"] = (100 * df["parameters"] / self.total).round(3)
        return df


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count a model's parameters by group: LoRA, other trainable (head), frozen."""
    lora = head = frozen = 0
    for name, p in model.named_parameters():
        if is_lora_param(name):
            lora += p.numel()
        elif p.requires_grad:
            head += p.numel()
        else:
            frozen += p.numel()
    return ParameterCount(lora=lora, head=head, frozen=frozen)
