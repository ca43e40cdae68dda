"""Token windows for calibration and evaluation (the protocols of BENCHMARK.md).

Both tokenize the whole text once with ``add_special_tokens=False``. Calibration draws seeded
random windows (``pydoc-128x512``); evaluation cuts non-overlapping windows and drops the tail
(``lee-512``), optionally keeping only the last few (``pydoc-last24``).
"""
from __future__ import annotations

import random

import torch

from ..errors import InputError


def token_ids(tokenizer, text: str) -> torch.Tensor:
    """The token stream of ``text``: LongTensor ``(n_tokens,)``, no BOS/EOS added."""
    # verbose=False: the stream is longer than the model's context by design; no warning.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(ids: torch.Tensor, n_samples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``n_samples`` windows of ``ids (n_tokens,)`` at starts ``rng.randint(0, n - seqlen)``, in order."""
    _check_int("n_samples", n_samples, 1)
    _check_int("seqlen", seqlen, 2)
    n = ids.numel()
    if n < seqlen:
        raise InputError(f"calibration text has {n} tokens; windows of {seqlen} tokens need at least {seqlen}")
    rng = random.Random(seed)
    starts = [rng.randint(0, n - seqlen) for _ in range(n_samples)]
    return torch.stack([ids[s:s + seqlen] for s in starts])


def split_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None,
                  last: bool = False) -> torch.Tensor:
    """Non-overlapping windows of ``ids (n_tokens,)``, tail dropped: ``(n_windows, seqlen)``.

    ``max_windows`` keeps the first that many (the last, with ``last=True``).
    """
    _check_int("seqlen", seqlen, 2)
    if max_windows is not None:
        _check_int("max_windows", max_windows, 1)
    n_windows = ids.numel() // seqlen
    if n_windows == 0:
        raise InputError(f"evaluation text has {ids.numel()} tokens; one window of {seqlen} tokens "
                         f"needs at least {seqlen}")
    windows = ids[: n_windows * seqlen].reshape(n_windows, seqlen)
    if max_windows is not None:
        windows = windows[-max_windows:] if last else windows[:max_windows]
    return windows


def calibration_windows(tokenizer, text: str, n_samples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """Seeded random windows ``(n_samples, seqlen)`` of ``text`` (the ``pydoc-128x512`` protocol)."""
    return sample_windows(token_ids(tokenizer, text), n_samples, seqlen, seed)


def eval_windows(tokenizer, text: str, seqlen: int, max_windows: int | None = None,
                 last: bool = False) -> torch.Tensor:
    """Non-overlapping windows ``(n, seqlen)`` of ``text`` (the ``lee-512`` / ``pydoc-last24`` rules)."""
    return split_windows(token_ids(tokenizer, text), seqlen, max_windows, last)


def _check_int(name: str, value, minimum: int) -> None:
    # seqlen >= 2: a window needs one token to predict another from.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
