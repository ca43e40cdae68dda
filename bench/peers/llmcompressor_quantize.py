"""Quantize SmolLM2 with llm-compressor, one recipe per process; runs in the peer's own venv.

Never imports lowbit (this venv does not have it). For one recipe of ``PEER_RECIPES`` it loads
the float model exactly as shared/BENCHMARK.md says (GGUF through transformers, float32), times
llm-compressor's ``oneshot``, saves a compressed-tensors checkpoint with llm-compressor's own
``save_pretrained``, and writes ``bench.json`` beside it (timing, peak RSS, versions, setting).
Evaluation happens elsewhere, in lowbit's venv, with the same evaluator for every tool.

    python llmcompressor_quantize.py --list
    python llmcompressor_quantize.py --recipe w4a16-rtn --model PATH --out DIR

One process per recipe, so that peak RSS is that recipe's alone. Later peer methods (GPTQ,
AWQ, SmoothQuant) are new rows of ``PEER_RECIPES``: a setting and a function that builds the
llm-compressor modifiers (and says whether it needs the calibration windows).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class PeerRecipe:
    """One llm-compressor run: the setting as the results schema names it, and its modifiers."""

    name: str
    method: str
    bits: int
    group_size: int
    sym: bool
    build: Callable[["PeerRecipe"], list]
    acts: str = "a16"
    needs_calibration: bool = False


def weight_scheme(r: PeerRecipe) -> dict:
    """QuantizationModifier's ``config_groups`` for int weight-only quantization of every Linear."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    strategy = "group" if r.group_size > 0 else "channel"
    weights = QuantizationArgs(num_bits=r.bits, type="int", symmetric=r.sym, strategy=strategy,
                               group_size=r.group_size if r.group_size > 0 else None, dynamic=False)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}


def rtn_modifiers(r: PeerRecipe) -> list:
    # QuantizationModifier with the default (min-max) weight observer is llm-compressor's
    # round-to-nearest: no calibration data touches weight-only schemes.
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(config_groups=weight_scheme(r), ignore=["lm_head"])]


def awq_modifiers(r: PeerRecipe) -> list:
    # llm-compressor 0.14's AWQ is a transform; its QuantizationModifier then rounds the scaled
    # weights to nearest (the API its deprecation notice for modifiers.awq names). Defaults of the
    # paper: duo scaling, a 20-point grid.
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    return [AWQModifier(duo_scaling=True, n_grid=20),
            QuantizationModifier(config_groups=weight_scheme(r), ignore=["lm_head"])]


def gptq_modifiers(r: PeerRecipe) -> list:
    # llm-compressor's GPTQ with its own defaults (damp 0.01 of the mean diagonal, block 128,
    # static act-order), the setting of shared/BENCHMARK.md's GPTQ rows.
    from llmcompressor.modifiers.gptq import GPTQModifier

    return [GPTQModifier(config_groups=weight_scheme(r), ignore=["lm_head"])]


PEER_RECIPES: list[PeerRecipe] = [
    PeerRecipe("w4a16-rtn", "rtn", 4, 64, False, rtn_modifiers),
    PeerRecipe("w4a16-rtn-sym", "rtn", 4, 64, True, rtn_modifiers),
    PeerRecipe("w3a16-rtn", "rtn", 3, 64, False, rtn_modifiers),
    PeerRecipe("w8a16-rtn", "rtn", 8, -1, True, rtn_modifiers),
    # Fails without an accelerator in 0.14 ("Cannot access accelerator device when none is
    # available"); the attempt and its error are recorded in bench.json, not dropped.
    PeerRecipe("w4a16-awq", "awq+rtn", 4, 64, False, awq_modifiers, needs_calibration=True),
    # GPTQ (issue 4), W4 and W3 group 64, asym and sym, calibrated on pydoc-128x512.
    PeerRecipe("w4a16-gptq", "gptq", 4, 64, False, gptq_modifiers, needs_calibration=True),
    PeerRecipe("w3a16-gptq", "gptq", 3, 64, False, gptq_modifiers, needs_calibration=True),
    PeerRecipe("w4a16-gptq-sym", "gptq", 4, 64, True, gptq_modifiers, needs_calibration=True),
    PeerRecipe("w3a16-gptq-sym", "gptq", 3, 64, True, gptq_modifiers, needs_calibration=True),
]


def w8a8_scheme(r: PeerRecipe) -> dict:
    """compressed-tensors' W8A8 preset: int8 weights per channel, int8 inputs per token (dynamic)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel", dynamic=False)
    inputs = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights, input_activations=inputs)}


def w8a8_modifiers(r: PeerRecipe) -> list:
    # Min-max weights (round to nearest), activations scaled per token at run time: no data needed.
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(config_groups=w8a8_scheme(r), ignore=["lm_head"])]


def smoothquant_gptq_w8a8_modifiers(r: PeerRecipe) -> list:
    # llm-compressor's W8A8 example: SmoothQuant (alpha 0.5, its own mappings for the model),
    # then GPTQ for the int8 weights, with its defaults (damp 0.01, static act order).
    from llmcompressor.modifiers.quantization import GPTQModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    return [SmoothQuantModifier(smoothing_strength=0.5),
            GPTQModifier(config_groups=w8a8_scheme(r), ignore=["lm_head"])]


def fp8_dynamic_scheme(r: PeerRecipe) -> dict:
    """compressed-tensors' FP8_DYNAMIC preset: E4M3 weights per channel, E4M3 inputs per token at
    run time, the scheme vLLM's FP8 checkpoints use."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="channel", dynamic=False)
    inputs = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="token", dynamic=True)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights, input_activations=inputs)}


def fp8_dynamic_modifiers(r: PeerRecipe) -> list:
    # Min-max E4M3 weights, inputs scaled per token at run time: no data needed.
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(config_groups=fp8_dynamic_scheme(r), ignore=["lm_head"])]


# Weight + activation quantization (issue 8), beside lowbit's w8a8-int8, w8a8-smoothquant and
# w8a8-fp8.
PEER_RECIPES += [
    PeerRecipe("w8a8-fp8-dynamic", "rtn", 8, -1, True, fp8_dynamic_modifiers, acts="fp8"),
    PeerRecipe("w8a8-int8", "rtn", 8, -1, True, w8a8_modifiers, acts="a8-dynamic"),
    PeerRecipe("w8a8-smoothquant-gptq", "smoothquant+gptq", 8, -1, True, smoothquant_gptq_w8a8_modifiers,
               acts="a8-dynamic", needs_calibration=True),
]
BY_NAME = {r.name: r for r in PEER_RECIPES}


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux: the high-water mark of this process's resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def versions() -> dict:
    from importlib.metadata import version

    return {"llmcompressor": version("llmcompressor"),
            "llmcompressor.compressed-tensors": version("compressed-tensors"),
            "llmcompressor.transformers": version("transformers"),
            "llmcompressor.torch": version("torch")}


def load_fp(source: Path):
    """The float32 model from the GGUF file, or from the dense copy of it that bench/fp_copy.py saves."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.is_dir():
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        return model.eval(), AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    return model.eval(), tokenizer


def present_as_float(model, directory: Path) -> None:
    """Make the dense float32 model look like the float checkpoint it is, for ``oneshot``.

    transformers records ``quantization_config: {quant_method: gguf}`` on a model it loaded from
    a GGUF although it dequantized every weight, and oneshot refuses "already quantized" models;
    it also re-reads ``config.json`` from ``name_or_path``, which a GGUF's directory lacks.
    """
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    model.config.name_or_path = str(directory)


def pydoc_calibration(tokenizer, n_samples: int = 128, seqlen: int = 512):
    """``pydoc-128x512`` of shared/BENCHMARK.md, as a datasets.Dataset of token ids."""
    import random

    from datasets import Dataset
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rng = random.Random(0)
    starts = [rng.randint(0, len(ids) - seqlen) for _ in range(n_samples)]
    windows = [ids[s:s + seqlen] for s in starts]
    return Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * seqlen] * n_samples})


def attempt_failed(recipe: PeerRecipe, out: Path, error: BaseException, seconds: float,
                   load_s: float, threads: int) -> dict:
    """Record a run the peer refused or could not finish: bench.json with the error, no checkpoint.
    ``quality.py`` renders such a row with its reason instead of a perplexity."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    meta = {
        "tool": "llmcompressor", "recipe": recipe.name, "method": recipe.method,
        "bits": recipe.bits, "group_size": recipe.group_size, "sym": recipe.sym, "acts": recipe.acts,
        "error": f"{type(error).__name__}: {first_line}"[:300], "failed_after_s": round(seconds, 3),
        "load_s": round(load_s, 3), "threads": threads, "peak_rss_gib": round(peak_rss_gib(), 3),
        "versions": versions(),
    }
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "bench.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(out.with_name(out.name + ".fp-config"), ignore_errors=True)
    return meta


def _raise_timeout(signum, frame):
    raise TimeoutError("gave up: still running at the --timeout limit")


def quantize(recipe: PeerRecipe, source: Path, out: Path, threads: int | None,
             timeout: int | None = None) -> dict:
    import torch
    from llmcompressor import oneshot

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model, tokenizer = load_fp(source)
    load_s = time.perf_counter() - t0
    present_as_float(model, out.with_name(out.name + ".fp-config"))
    start, cpu_start = time.perf_counter(), time.process_time()
    if recipe.needs_calibration:
        dataset = pydoc_calibration(tokenizer)
        start, cpu_start = time.perf_counter(), time.process_time()
        if timeout:
            import signal

            signal.signal(signal.SIGALRM, _raise_timeout)
            signal.alarm(timeout)
        try:
            oneshot(model=model, processor=tokenizer, recipe=recipe.build(recipe), dataset=dataset,
                    num_calibration_samples=len(dataset), max_seq_length=len(dataset[0]["input_ids"]))
        except Exception as e:  # the peer's own failure is a result of the benchmark, not a crash
            return attempt_failed(recipe, out, e, time.perf_counter() - start, load_s, torch.get_num_threads())
        finally:
            if timeout:
                signal.alarm(0)
    else:
        oneshot(model=model, recipe=recipe.build(recipe), pipeline="datafree")
    quant_s = time.perf_counter() - start
    quant_cpu_s = time.process_time() - cpu_start
    rss_after_quant = peak_rss_gib()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, save_compressed=True)
    tokenizer.save_pretrained(tmp)
    meta = {
        "tool": "llmcompressor", "recipe": recipe.name, "method": recipe.method,
        "bits": recipe.bits, "group_size": recipe.group_size, "sym": recipe.sym,
        "acts": recipe.acts, "quant_s": round(quant_s, 3), "quant_cpu_s": round(quant_cpu_s, 3), "load_s": round(load_s, 3),
        "peak_rss_gib": round(peak_rss_gib(), 3), "peak_rss_quant_gib": round(rss_after_quant, 3),
        "threads": torch.get_num_threads(), "versions": versions(), "model": str(source),
    }
    (tmp / "bench.json").write_text(json.dumps(meta, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    shutil.rmtree(out.with_name(out.name + ".fp-config"), ignore_errors=True)
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="print the recipe table as JSON and exit")
    ap.add_argument("--recipe", choices=sorted(BY_NAME))
    ap.add_argument("--model", type=Path,
                    help="SmolLM2 GGUF file, or the dense float32 copy of it (bench/fp_copy.py)")
    ap.add_argument("--out", type=Path, help="checkpoint directory to write")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--timeout", type=int, default=None,
                    help="calibrated recipes: record the run as failed after this many seconds")
    a = ap.parse_args(argv)
    if a.list:
        print(json.dumps([{k: v for k, v in vars(r).items() if k != "build"} for r in PEER_RECIPES]))
        return 0
    if not (a.recipe and a.model and a.out):
        ap.error("--recipe, --model and --out are required")
    meta = quantize(BY_NAME[a.recipe], a.model, a.out, a.threads, a.timeout)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
