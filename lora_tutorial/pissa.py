"""PiSSA (Meng et al., 2024): LoRA initialised from the top-r singular vectors of W, the rest kept frozen.

With ``W = U S V^T``, ``A = sqrt(S_r / s) V_r^T`` and ``B = U_r sqrt(S_r / s)``, so that ``s B A`` is W's best
rank-r approximation; the frozen base becomes the residual ``W - s B A``, and the layer computes W exactly
at the start. Training then moves W's principal directions instead of a random, zero-started update.
peft's ``init_lora_weights="pissa"`` does the same (and loads adapters saved this way the same way).
"""

from __future__ import annotations

import torch

from .lora import VARIANTS, LoRALinear, Variant


class PiSSA(Variant):
    """Plain LoRA but for the start: A and B from W's SVD, the base weight replaced by the residual."""

    name, peft = "pissa", {"init_lora_weights": "pissa"}

    @torch.no_grad()
    def init(self, layer: LoRALinear) -> None:
        """A and B from the top-r singular triplets of the base weight; the base keeps the residual. Calling
        it again on the same layer would split the residual once more: build a new layer instead."""
        weight = layer.base.weight
        u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
        root = torch.sqrt(s[: layer.r] / layer.scaling)
        layer.lora_A.copy_(root[:, None] * vh[: layer.r])
        layer.lora_B.copy_(u[:, : layer.r] * root)
        weight.copy_((weight.float() - layer.scaling * layer.lora_B @ layer.lora_A).to(weight.dtype))


VARIANTS["pissa"] = PiSSA()
