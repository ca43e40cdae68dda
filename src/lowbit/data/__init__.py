"""Text sources and the token windows cut from them."""
from .text import BUILTIN_TEXTS, HF_TEXTS, load_text
from .windows import calibration_windows, eval_windows, sample_windows, split_windows, token_ids

__all__ = ["BUILTIN_TEXTS", "HF_TEXTS", "load_text", "calibration_windows", "eval_windows",
           "sample_windows", "split_windows", "token_ids"]
