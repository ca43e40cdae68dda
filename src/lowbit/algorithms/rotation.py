"""Offline orthogonal rotation (the "R1 + R2" of QuaRot, Ashkboos et al. 2024, and SpinQuant,
Liu et al. 2024): spread activation outliers over every channel before quantizing.

With every RMSNorm's weight folded into the linears it feeds, a pre-norm transformer computes the
same function when its residual stream is rotated by an orthogonal ``Q``: RMSNorm divides by
``‖x‖``, which ``x Q`` keeps, so it commutes with the rotation; every reader of the stream
(q/k/v, gate/up, the head) takes ``W Q`` and every writer (embeddings, o_proj, down_proj)
produces ``x Q`` (``E Q``, ``Qᵀ W``, ``Qᵀ b``). A channel that carried an outlier in ``x`` is
spread over all channels of ``x Q``, so one scale per tensor (or per token) fits the rest of the
values far better. R2 does the same inside attention: per head, the values and o_proj's input
are rotated by a ``head_dim`` matrix.

``Q`` is a Hadamard matrix ``H / √n`` (``algorithms/hadamard.py``) with random signs on its rows
(QuaRot's randomized Hadamard: ``diag(s) H / √n``), or, for a width no Hadamard construction here
reaches, a random orthogonal matrix (QR of a Gaussian). Everything in float64.

The pure part is here; folding and rotating a model is ``pipeline/rotate.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from .hadamard import hadamard_factors, random_signs, randomized_hadamard
from .registry import register_transform, step_fields


@dataclass(frozen=True)
class RotationConfig:
    """``seed``: the random signs (or the random orthogonal matrix); ``heads``: also rotate each
    attention head's values and o_proj's input (R2); ``untie``: allow untying tied embeddings
    (the head must get its own rotated weight; one more vocab × hidden matrix in the checkpoint)."""

    seed: int = 0
    heads: bool = True
    untie: bool = True

    def __post_init__(self):
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InputError(f"rotate: seed must be an integer, got {self.seed!r}")
        for name in ("heads", "untie"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"rotate: {name} must be true or false, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return {"method": "rotate", "seed": self.seed, "heads": self.heads, "untie": self.untie}

    @classmethod
    def from_dict(cls, d: dict) -> "RotationConfig":
        d = step_fields(cls, d, "rotate")
        return cls(**d)


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """``Q (n, n)`` float64, Haar-distributed: QR of a Gaussian, signs fixed by ``R``'s diagonal."""
    A = torch.randn(n, n, dtype=torch.float64, generator=generator)
    Q, R = torch.linalg.qr(A)
    return Q * torch.sign(torch.diagonal(R)).unsqueeze(0)


def rotation_matrix(n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``(Q (n, n) float64 orthogonal, kind)``: ``diag(s) H / √n`` with random signs ``s`` when a
    Hadamard matrix of order ``n`` is known (kind ``"hadamard"``), else a random orthogonal matrix
    (kind ``"random"``). Deterministic in ``(n, seed)``."""
    g = torch.Generator().manual_seed(seed)
    if hadamard_factors(n) is None:
        return random_orthogonal(n, g), "random"
    return randomized_hadamard(random_signs(n, g)), "hadamard"


# A whole-model transform: it needs no calibration and runs once, before any block-level step.
register_transform("rotate", RotationConfig, needs_calibration=False, whole_model=True)
