"""The FP model (SmolLM2-135M from its GGUF, float32) saved once as a dense checkpoint.

Every benchmark process, lowbit's and the peers', loads the float model from this copy:
dequantizing the GGUF takes minutes per process on a busy 2-core machine and gives
bit-identical weights, and one loading path for all tools keeps load time and peak memory
comparable between them.

    python bench/fp_copy.py [--work DIR]     # prints the directory (made if missing)
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK = Path(os.environ.get("LOWBIT_BENCH_WORK", ROOT / "lowbit-out-bench"))
MODEL = "builtin:smollm2-135m"


def fp_copy_dir(work: Path) -> Path:
    return Path(work) / "fp-float32"


def save_float_copy(model, tokenizer, work: Path) -> Path:
    """Save ``model`` dense unless the copy exists; returns its directory.

    transformers records ``quantization_config: {quant_method: gguf}`` on a model loaded from a
    GGUF although every weight is dense float32; it is dropped, or the copy would not load as
    the float model it is.
    """
    out = fp_copy_dir(work)
    if (out / "config.json").exists():
        return out
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    a = ap.parse_args(argv)
    out = fp_copy_dir(a.work)
    if not (out / "config.json").exists():
        from lowbit.sources import load_model

        model, tokenizer = load_model(MODEL)
        save_float_copy(model, tokenizer, a.work)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
