"""Several adapters on one base model: load each once, switch the one the model computes with per request,
or switch LoRA off, as peft's ``load_adapter``, ``set_adapter`` and ``disable_adapter`` do. One frozen model
serves every task; an adapter costs only its own tensors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .adapter_io import adapter_state_dict, adapter_tensors, check_same_lora, copy_into, read_adapter_config
from .errors import UsageError
from .lora import LoRAConfig, lora_layers


class AdapterSet:
    """Named adapters for one LoRA-adapted model (``apply_lora``, or ``load_adapter`` into the base). Each
    adapter's tensors (A, B, DoRA's magnitudes, the trained head) are kept apart, and :meth:`use` copies
    one set into the model: it then computes exactly what that adapter alone would. All adapters need the
    model's LoRA settings (rank, alpha, variant, targets, layers, trained modules)."""

    def __init__(self, model: nn.Module) -> None:
        config: LoRAConfig | None = getattr(model, "lora_config", None)
        if config is None:
            raise UsageError(
                "This model has no LoRA layers; call apply_lora(model, config) or load_adapter first."
            )
        self.model, self.config = model, config
        self.adapters: dict[str, dict[str, torch.Tensor]] = {}
        self.active: str | None = None

    def add(self, name: str, path: str | Path | None = None) -> AdapterSet:
        """Keep the adapter saved in folder ``path`` under ``name`` (without ``path``: the tensors the model
        holds now, such as an adapter just trained)."""
        if name in self.adapters:
            raise UsageError(f"An adapter named {name!r} is loaded already; pick another name or remove it.")
        if path is None:
            tensors = {n: t.clone() for n, t in adapter_state_dict(self.model).items()}
        else:
            check_same_lora(self.config, read_adapter_config(path), path)
            tensors = adapter_tensors(self.model, path)
        self.adapters[name] = tensors
        return self

    def remove(self, name: str) -> None:
        """Forget an adapter (the model keeps computing with it if it is the active one)."""
        self._known(name)
        del self.adapters[name]
        self.active = None if self.active == name else self.active

    def use(self, name: str) -> nn.Module:
        """Make ``name`` the adapter the model computes with; returns the model."""
        self._known(name)
        self._not_merged("switch adapters")
        self.active = name
        return copy_into(self.model, self.adapters[name])

    @contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        """Inside ``with``, every LoRA layer computes its base layer alone (the trained head stays)."""
        self._not_merged("disable LoRA")
        layers = lora_layers(self.model).values()
        for layer in layers:
            layer.enabled = False
        try:
            yield self.model
        finally:
            for layer in layers:
                layer.enabled = True

    def nbytes(self, name: str) -> int:
        """The memory one adapter's tensors take."""
        self._known(name)
        return sum(t.numel() * t.element_size() for t in self.adapters[name].values())

    def _known(self, name: str) -> None:
        if name not in self.adapters:
            raise UsageError(f"No adapter named {name!r}; loaded: {', '.join(self.adapters) or 'none'}.")

    def _not_merged(self, what: str) -> None:
        if any(layer.merged for layer in lora_layers(self.model).values()):
            raise UsageError(f"The model's LoRA layers are merged; call unmerge() on them to {what}.")
