"""Looking inside learned adapters: the update dW = s B A, its spectrum, its size, and how much two
adapters' subspaces overlap (the LoRA paper's normalised Grassmann similarity)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .adapter_io import PREFIX, WEIGHTS_FILE, read_adapter_config


def adapter_matrices(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """``{module name: (A, B, scaling)}`` for every adapted layer of a saved adapter."""
    config = read_adapter_config(path)
    scaling = config.scaling
    tensors = load_file(Path(path) / WEIGHTS_FILE)
    names = sorted(
        k.removeprefix(PREFIX).removesuffix(".lora_A.weight") for k in tensors if k.endswith(".lora_A.weight")
    )
    return {
        n: (tensors[f"{PREFIX}{n}.lora_A.weight"], tensors[f"{PREFIX}{n}.lora_B.weight"], scaling)
        for n in names
    }


def delta_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The learned update ``s * B @ A`` of every adapted layer."""
    return {n: s * B @ A for n, (A, B, s) in adapter_matrices(path).items()}


def subspace_similarity(A1: torch.Tensor, A2: torch.Tensor, i: int, j: int) -> float:
    """phi(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j), with U the right-singular vectors
    of each A (r x k): 1 when the top-i directions lie inside the top-j ones, 0 when orthogonal."""
    U1 = torch.linalg.svd(A1.double(), full_matrices=False).Vh[:i].T
    U2 = torch.linalg.svd(A2.double(), full_matrices=False).Vh[:j].T
    return (torch.linalg.norm(U1.T @ U2) ** 2 / min(i, j)).item()
