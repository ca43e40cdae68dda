"""What a quantized model kept: perplexity, KL and top-1 agreement against the float model,
size and bits per weight, and the report that shows them."""
from .compare import WindowStats, compare_logits
from .evaluate import EvalResult, evaluate, perplexity
from .report import before_after_rows, format_layers, format_table, render_markdown, write_report
from .size import bits_per_weight, checkpoint_size_mb, model_size_mb, weight_count
from .kv_eval import KVEvalResult, evaluate_kv, kv_rows

__all__ = ["WindowStats", "compare_logits", "EvalResult", "evaluate", "perplexity",
           "before_after_rows", "format_layers", "format_table", "render_markdown", "write_report",
           "bits_per_weight", "checkpoint_size_mb", "model_size_mb", "weight_count",
           "KVEvalResult", "evaluate_kv", "kv_rows"]
