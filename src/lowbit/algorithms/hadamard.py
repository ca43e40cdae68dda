"""Hadamard matrices: ``H (n, n)`` with entries ±1 and ``H Hᵀ = n I``.

Sylvester's construction gives every power of two; Paley's two constructions give ``q + 1``
(prime ``q ≡ 3 mod 4``) and ``2 (q + 1)`` (prime ``q ≡ 1 mod 4``), and a Kronecker product with a
Sylvester matrix multiplies their order by any power of two. That covers the hidden sizes of most
models that are not powers of two: 576 = 36 · 16 (Paley II, q = 17), 1536 = 12 · 128,
2560 = 20 · 128, 3072 = 12 · 256. Only prime ``q`` are used (no finite-field arithmetic), so a
few orders that Paley reaches through prime powers are missing; :func:`hadamard` returns None
for them and the caller picks another orthogonal matrix.
"""
from __future__ import annotations

import math

import torch


def sylvester(n: int) -> torch.Tensor:
    """``H (n, n)`` float64 for ``n`` a power of two: ``H_2k = [[H, H], [H, −H]]``."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Sylvester's construction needs a power of two, got {n}")
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q ** 0.5) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """``Q (q, q)``: ``Q_ij = χ(j − i)``, the Legendre symbol mod the prime ``q`` (χ(0) = 0)."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)], dtype=torch.float64)
    i = torch.arange(q)
    return chi[(i[None, :] - i[:, None]) % q]


def paley(n: int) -> torch.Tensor | None:
    """A Hadamard matrix of order ``n`` from Paley's constructions with a prime ``q``, or None."""
    q = n - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I: H = I + [[0, 1ᵀ], [−1, Q]], Q antisymmetric
        S = torch.zeros(n, n, dtype=torch.float64)
        S[0, 1:], S[1:, 0], S[1:, 1:] = 1, -1, _jacobsthal(q)
        return torch.eye(n, dtype=torch.float64) + S
    q = n // 2 - 1
    if n % 2 == 0 and _is_prime(q) and q % 4 == 1:  # Paley II: Q symmetric, each entry a 2x2 block
        m = q + 1
        S = torch.zeros(m, m, dtype=torch.float64)
        S[0, 1:], S[1:, 0], S[1:, 1:] = 1, 1, _jacobsthal(q)
        zero_block = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        one_block = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        blocks = torch.where((S == 0)[:, :, None, None], zero_block, S[:, :, None, None] * one_block)
        return blocks.permute(0, 2, 1, 3).reshape(n, n)
    return None


def hadamard_factors(n: int) -> tuple[torch.Tensor, int] | None:
    """``(A (m, m), p)`` with ``hadamard(n) = kron(A, sylvester(p))`` and ``n = m · p``: ``A`` is
    Sylvester's ``H_1`` for a power of two, else the smallest Paley order ``m`` with ``n / m`` a power
    of two; None when neither reaches ``n``. Applying the two factors one after the other costs
    ``n (m + p)`` instead of ``n²`` per row (the online rotation of ``modules/input_hadamard.py``)."""
    if n >= 1 and not n & (n - 1):
        return torch.ones(1, 1, dtype=torch.float64), n
    m, power = n, 1
    candidates = []
    while m >= 2:
        candidates.append((m, power))
        if m % 2:
            break
        m, power = m // 2, power * 2
    for m, power in reversed(candidates):  # smallest Paley factor first: the cheapest to build
        A = paley(m)
        if A is not None:
            return A, power
    return None


def hadamard(n: int) -> torch.Tensor | None:
    """``H (n, n)`` float64, ``H Hᵀ = n I``: Sylvester, or the smallest Paley order ``m`` with
    ``n / m`` a power of two, Kronecker with Sylvester(n / m); None when neither reaches ``n``."""
    if n >= 1 and not n & (n - 1):
        return sylvester(n)
    factors = hadamard_factors(n)
    if factors is None:
        return None
    A, power = factors
    H = torch.kron(A, sylvester(power))
    # Cheap insurance against a wrong construction: a non-Hadamard H would make the
    # rotation non-orthogonal and silently change the model.
    if not torch.equal(H @ H.T, n * torch.eye(n, dtype=torch.float64)):
        raise AssertionError(f"Hadamard construction of order {n} is wrong")
    return H


def random_signs(n: int, seed: int | torch.Generator) -> torch.Tensor:
    """``s (n,)`` int8, each ±1 with equal odds, from ``seed`` (or a generator to draw from)."""
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=g, dtype=torch.int8) * 2 - 1


def randomized_hadamard(signs: torch.Tensor) -> torch.Tensor | None:
    """``Q = diag(s) H / √n`` (n, n) float64 on the signs' device, orthogonal; None when no
    Hadamard matrix of order ``n`` is known."""
    n = signs.numel()
    H = hadamard(n)
    if H is None:
        return None
    return signs.to(torch.float64)[:, None] * H.to(signs.device) / math.sqrt(n)
