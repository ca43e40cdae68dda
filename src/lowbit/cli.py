"""The ``lowbit`` command line: a thin layer over the Python API."""
from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import click

from .errors import LowbitError

DEFAULT_OUT_ROOT = "lowbit-out"
# Foreign layouts lowbit also writes (lowbit.io.export); listed here so --help needs no imports.
EXPORT_CHOICES = ("gptq", "gptq-v2", "awq", "gguf")


class _Group(click.Group):
    """Turns user-caused errors into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LowbitError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.secho("interrupted: no output was written (finished calibration blocks stay in the "
                        "resume directory; the same command continues from them)", fg="red", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lowbit")
def main():
    """lowbit: quantize causal language models, measure what they kept, save them where
    serving engines load them.

    \b
    Quick start (offline, built-in SmolLM2-135M):
      lowbit quantize                 # W4 g64, before/after table, saved under ./lowbit-out/
      lowbit inspect lowbit-out/smollm2-135m-w4a16-rtn
      lowbit generate lowbit-out/smollm2-135m-w4a16-rtn "The capital of France is"
    """


def _auto_eval_text() -> str:
    from importlib.util import find_spec
    return "builtin:lee" if find_spec("gensim") else "builtin:pydoc"


def _slug(source: str) -> str:
    name = source.split(":", 1)[1] if source.startswith("builtin:") else Path(source.rstrip("/")).name
    return name.removesuffix(".gguf").replace("/", "-") or "model"


@main.command()
@click.argument("model", required=False, default=None)
@click.option("--preset", help="Named recipe (see `lowbit presets`), e.g. w4a16-rtn, w3a16-rtn, w8a16-rtn.")
@click.option("--recipe", "recipe_file", type=click.Path(), help="Recipe YAML file.")
@click.option("--method", help="gptq (default), rtn, awq (AWQ + RTN) or awq-gptq (AWQ, then GPTQ); "
              "steps joined by '-', calibrated ones on --calib.")
@click.option("--bits", type=int, help="Weight bits: 2, 3, 4 or 8.")
@click.option("--group-size", type=int, help="Group size along the input dim; -1 per-channel, 0 per-tensor.")
@click.option("--sym/--asym", default=None, help="Symmetric (no zero point) or asymmetric.")
@click.option("--clip/--no-clip", default=None, help="Search a clipping ratio per group (RTN default: on).")
@click.option("--observer", type=click.Choice(["minmax", "moving_average", "percentile", "mse", "kl"]),
              help="Static activation recipes (the *-static presets: w8a8-int8-static, w8a8-smoothquant-static, "
                   "w8a8-rotated-hadamard-static, w8a8-fp8-static, ...): how calibration inputs become each "
                   "layer's input scale.")
@click.option("--calib", default="builtin:pydoc", show_default=True,
              help="Calibration text for methods that need it: builtin:pydoc, a .txt/.jsonl file, hf:wikitext2, ...")
@click.option("--n-samples", default=128, show_default=True, help="Calibration windows.")
@click.option("--seqlen", default=512, show_default=True, help="Tokens per calibration/evaluation window.")
@click.option("--calib-batch", default=None, type=click.IntRange(min=1),
              help="Calibration windows per block forward; fewer use less memory (same result up to "
                   "float summation order) [default: 4 on a CPU, 16 on a GPU].")
@click.option("--true-sequential", is_flag=True,
              help="Calibrate each block in dependency order (q/k/v, then o on the quantized q/k/v's "
                   "outputs, ...) instead of all its linears in one pass on the float block; slower, "
                   "same quality on SmolLM2 (docs/GPTQ-DOMAIN.md).")
@click.option("--replay-memory", type=click.FloatRange(min=0), default=None,
              help="GiB a --true-sequential walk may keep of a block's finished outputs to skip "
                   "recomputing them (same result, faster) [default: 0.5 on a CPU, 0 on a GPU].")
@click.option("--calibration-dtype", type=click.Choice(["auto", "float32", "bfloat16", "model"]), default="auto",
              show_default=True,
              help="What a calibrated walk's block forwards compute in. auto: bfloat16 for a float32 model "
                   "on a CPU with native bfloat16 (AVX512-BF16/AMX; about 4x faster matmuls) and a "
                   "calibrated rounder without transforms, else the model's dtype. The weights are "
                   "always rounded from the model's own dtype (docs/GPTQ-DOMAIN.md).")
@click.option("--out", type=click.Path(), help="Output directory [default: ./lowbit-out/<model>-<recipe>].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "compressed-tensors", "native", *EXPORT_CHOICES]),
              help="Checkpoint layout; auto = compressed-tensors where it can express the scheme "
                   "(gptq, gptq-v2, awq, gguf: see docs/CHECKPOINTS.md).")
@click.option("--eval", "eval_text", default="auto", show_default=True,
              help="Evaluation text (builtin:lee, builtin:pydoc, a file, hf:...), 'auto' (lee if gensim is "
                   "installed, else pydoc) or 'none'.")
@click.option("--eval-windows", default=24, show_default=True, help="Evaluation windows; 0 = all.")
@click.option("--resume-dir", type=click.Path(), help="Where calibrated runs checkpoint every finished block; "
              "the same command run again resumes from there [default: <out>.partial].")
@click.option("--dry-run", is_flag=True, help="Print the plan (peak memory, estimated time) and stop.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def quantize(model, preset, recipe_file, method, bits, group_size, sym, clip, observer, calib, n_samples,
             seqlen, calib_batch, true_sequential, replay_memory, calibration_dtype, out, overwrite, fmt,
             eval_text, eval_windows, resume_dir, dry_run, quiet):
    """Quantize MODEL (a Hugging Face id, a local directory, a .gguf file or builtin:smollm2-135m,
    the default) and save it; evaluate before/after unless --eval none."""
    from .io import check_output_dir, save
    from .quantize import quantize_model
    from .recipes.build import build_recipe
    from .sources import DEFAULT_MODEL, load_model

    model = model or DEFAULT_MODEL
    recipe = build_recipe(preset, recipe_file, method, bits, group_size, sym, clip, observer=observer)
    out = Path(out or Path(DEFAULT_OUT_ROOT) / f"{_slug(model)}-{recipe.name}")
    check_output_dir(out, overwrite)
    eval_text = _auto_eval_text() if eval_text == "auto" else eval_text
    acts = f", activations {recipe.activations.label}" if recipe.activations is not None else ""
    click.echo(f"model   {model}\nrecipe  {recipe.name}: {recipe.method}, {recipe.format.label()}{acts}, "
               f"ignore {list(recipe.ignore)}\noutput  {out}")
    progress = not quiet
    float_model, tokenizer = load_model(model)
    calib_ids = None
    if recipe.needs_calibration:
        from .data.text import load_text
        from .data.windows import calibration_windows
        calib_ids = calibration_windows(tokenizer, load_text(calib), n_samples, seqlen)
    from .pipeline.plan import plan_quantization
    n_calib, calib_len = (len(calib_ids), calib_ids[0].numel()) if calib_ids is not None else (0, seqlen)
    replay_bytes = None if replay_memory is None else int(replay_memory * 2 ** 30)
    plan = plan_quantization(float_model, recipe, n_calib, calib_len, resume=calib_ids is not None,
                             keep_reference=eval_text != "none", batch_size=calib_batch,
                             true_sequential=true_sequential, replay_memory=replay_bytes,
                             calibration_dtype=calibration_dtype)
    click.echo("\n".join(plan.lines()))
    from .io.deploy import layers_of_plan, planned_format
    planned = layers_of_plan(float_model, recipe)
    _echo_deploy(planned, planned_format(planned, fmt))
    if dry_run:
        click.echo("dry run: nothing written")
        return
    windows = None
    if eval_text != "none":
        from .data.text import load_text
        from .data.windows import eval_windows as make_windows
        windows = make_windows(tokenizer, load_text(eval_text), seqlen, max_windows=eval_windows or None)
    qmodel = copy.deepcopy(float_model) if windows is not None else float_model
    start = time.perf_counter()
    if calib_ids is not None:
        # A killed run leaves its finished blocks here; the same command picks them up again.
        resume_dir = Path(resume_dir or out.with_name(out.name + ".partial"))
        report = quantize_model(qmodel, recipe, calib=calib_ids, progress=progress,
                                resume_dir=resume_dir, source=model, batch_size=calib_batch,
                                true_sequential=true_sequential, replay_memory=replay_bytes,
                                calibration_dtype=calibration_dtype)
    else:
        report = quantize_model(qmodel, recipe, progress=progress)
    quant_s = time.perf_counter() - start
    click.echo(f"quantized {len(report.layers)} layers in {quant_s:.1f} s")
    if fmt == "gguf":
        _keep_gguf_source(qmodel, model)
    save(qmodel, tokenizer, out, format=fmt, overwrite=overwrite)
    click.echo(f"saved   {out}")
    _echo_saved_deploy(qmodel, out, fmt)
    if calib_ids is not None:
        from .pipeline.resume import remove_resume_dir
        remove_resume_dir(resume_dir)
    summary = {"model": model, "recipe": recipe.to_dict(), "quantization": report.to_dict(),
               "quant_s": round(quant_s, 2)}
    if windows is not None:
        ev = _before_after(float_model, qmodel, windows, out, eval_text, progress)
        summary.update(evaluation=ev, text=ev["text"], seqlen=ev["seqlen"], windows=ev["windows"],
                       tokens=ev["tokens"], rows=ev["rows"])
    from .eval import write_report
    write_report(out, summary)
    click.echo(f"report  {out / 'report.md'}")


def _echo_deploy(layers, fmt: str) -> None:
    """Which engines and kernels can serve the scheme (lowbit.io.deploy); warnings in yellow."""
    from .io.deploy import report_lines
    for line in report_lines(layers, fmt):
        click.secho(line, fg="yellow" if line.startswith("warning") else None)


def _echo_saved_deploy(model, out, fmt: str = "auto") -> None:
    from .io import detect_format
    from .io.deploy import layers_of_model, summary_line
    line = summary_line(layers_of_model(model), detect_format(out) if fmt == "auto" else fmt)
    click.secho(line, fg="yellow" if line.startswith("warning") else None)


def _keep_gguf_source(model, source: str) -> None:
    """A model that came from a GGUF keeps that file's tokenizer fields in its GGUF export."""
    from .sources import resolve_source
    where = resolve_source(source)
    if where.kind == "gguf":
        model.lowbit_gguf_source = where.path


def _before_after(float_model, qmodel, windows, out, eval_text, progress) -> dict:
    """One lockstep pass: the quantized model beside the float one gives both rows."""
    from .eval import before_after_rows, bits_per_weight, checkpoint_size_mb, evaluate, format_table
    from .eval import model_size_mb
    r = evaluate(qmodel, windows, reference=float_model, progress=progress)
    fp_bits = 8.0 * next(float_model.parameters()).element_size()
    rows = before_after_rows(r, "quantized", fp_size_mb=model_size_mb(float_model),
                             quant_size_mb=checkpoint_size_mb(out), fp_bits=fp_bits,
                             quant_bits=bits_per_weight(qmodel))
    click.echo(f"\n{eval_text}: {r.windows} windows of {r.seqlen} tokens, {r.tokens} predicted tokens")
    click.echo(format_table(rows))
    return {"text": eval_text, "windows": r.windows, "seqlen": r.seqlen, "tokens": r.tokens,
            "rows": rows, "seconds": r.seconds}


def _kv_cache_options(fn):
    """--kv-cache and its settings, shared by eval and generate."""
    options = [
        click.option("--kv-cache", type=click.Choice(["int8", "int4"]),
                     help="Store keys and values quantized (docs/KV-CACHE.md)."),
        click.option("--kv-group-size", type=int, help="Values per scale along the head dim (-1: whole "
                     "head); tokens per block for per-channel keys [default: 64]."),
        click.option("--kv-residual", type=int, help="Most recent tokens kept in float "
                     "[default: 0 for int8, 128 for int4]."),
        click.option("--kv-keys", type=click.Choice(["per-channel", "per-token"]),
                     help="Group keys per token along the head dim, or per channel over blocks of "
                     "tokens (KIVI) [default: per-token]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _kv_spec(kv_cache, group_size, residual, keys):
    from .errors import InputError
    if kv_cache is None:
        if group_size is not None or residual is not None or keys is not None:
            raise InputError("--kv-group-size, --kv-residual and --kv-keys need --kv-cache int8|int4")
        return None
    from .modules.kv_cache import kv_spec
    return kv_spec(kv_cache, group_size, residual, keys and keys.removeprefix("per-"))


@main.command("eval")
@click.argument("path")
@click.option("--text", default="auto", show_default=True, help="Evaluation text source.")
@click.option("--seqlen", default=512, show_default=True)
@click.option("--windows", "n_windows", default=0, show_default=True, help="Windows to evaluate; 0 = all.")
@click.option("--reference", help="Float model to compare against (KL, top-1).")
@_kv_cache_options
@click.option("--kv-chunk", default=32, show_default=True,
              help="With --kv-cache: tokens per forward call; earlier chunks are read back from the cache.")
@click.option("--quiet", is_flag=True)
def eval_cmd(path, text, seqlen, n_windows, reference, kv_cache, kv_group_size, kv_residual, kv_keys,
             kv_chunk, quiet):
    """Perplexity of PATH (a lowbit/compressed-tensors checkpoint or any model source) on TEXT,
    with KL and top-1 agreement against --reference. With --kv-cache, windows are fed in chunks
    through a quantized KV cache, beside the same chunks through the float cache."""
    from .data.text import load_text
    from .data.windows import eval_windows
    from .eval import evaluate, format_table
    spec = _kv_spec(kv_cache, kv_group_size, kv_residual, kv_keys)
    model, tokenizer = _load_any(path)
    text = _auto_eval_text() if text == "auto" else text
    windows = eval_windows(tokenizer, load_text(text), seqlen, max_windows=n_windows or None)
    ref = _load_any(reference)[0] if reference else None
    if spec is not None:
        _eval_kv(model, path, ref, reference, windows, spec, kv_chunk, text, quiet)
        return
    r = evaluate(model, windows, reference=ref, progress=not quiet)
    click.echo(f"{text}: {r.windows} windows, {r.tokens} predicted tokens")
    rows = [{"name": path, "ppl": r.ppl, "kl": r.kl, "top1": r.top1}]
    if ref is not None:
        rows.insert(0, {"name": reference, "ppl": r.ref_ppl})
    click.echo(format_table(rows))


def _eval_kv(model, path, ref, reference, windows, spec, chunk, text, quiet):
    """Chunked evaluation: the float cache (of --reference, else of PATH) beside the quantized one."""
    from .eval import format_table
    from .eval.kv_eval import evaluate_kv, float_cache, kv_rows
    from .modules.kv_cache import QuantizedKVCache
    quantized = f"{path} (KV {spec.name})"
    caches = {f"{path} (float cache)": float_cache} if ref is not None else {}
    caches[quantized] = lambda m: QuantizedKVCache(m.config, spec)
    base, results = evaluate_kv(model, windows, caches, chunk=chunk, reference=ref, progress=not quiet)
    base.name = f"{reference or path} (float cache)"
    click.echo(f"{text}: {base.windows} windows of {base.seqlen} tokens in chunks of {chunk}, "
               f"{base.tokens} predicted tokens; KV {spec.label()}")
    click.echo(format_table(kv_rows(base, results, {quantized: spec})))


def _load_any(path: str):
    """A saved quantized checkpoint through lowbit.load, anything else through the model sources."""
    from .io import is_quantized_checkpoint, load
    from .sources import load_model
    return load(path) if is_quantized_checkpoint(path) else load_model(path)


@main.command()
@click.argument("path")
@click.option("--format", "fmt", required=True,
              type=click.Choice(["compressed-tensors", "native", *EXPORT_CHOICES]),
              help="Layout to write (docs/CHECKPOINTS.md).")
@click.option("--out", required=True, type=click.Path(), help="Output directory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
def export(path, fmt, out, overwrite):
    """Rewrite the quantized checkpoint PATH (any layout lowbit reads) as --format in --out,
    atomically; the integers are carried over, not re-rounded."""
    from .io import check_output_dir, inspect_checkpoint, load, save
    check_output_dir(out, overwrite)
    model, tokenizer = load(path)
    save(model, tokenizer, out, format=fmt, overwrite=overwrite)
    info = inspect_checkpoint(out)
    click.echo(f"saved   {out} ({info['format']}, {info['size_bytes'] / 1e6:.1f} MB, "
               f"{info['bits_per_weight']} bits/weight over {info['quantized_layers']} quantized layers)")
    _echo_saved_deploy(model, out, fmt)


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--text", default="auto", show_default=True, help="Evaluation text source.")
@click.option("--reference", help="Model the others are compared with (KL, top-1) [default: the first].")
@click.option("--seqlen", default=512, show_default=True)
@click.option("--windows", "n_windows", default=0, show_default=True, help="Windows to evaluate; 0 = all.")
@click.option("--out", type=click.Path(), help="Also write compare.json and compare.md into this directory.")
@click.option("--quiet", is_flag=True)
def compare(paths, text, reference, seqlen, n_windows, out, quiet):
    """Evaluate several models (checkpoints of any format lowbit reads, .gguf files, model
    sources) on the same windows of TEXT and print one table."""
    import json
    from .eval import format_table
    from .eval.compare_models import compare_models
    text = _auto_eval_text() if text == "auto" else text
    result = compare_models(list(paths), text, reference=reference, seqlen=seqlen,
                            max_windows=n_windows or None, progress=not quiet)
    table = format_table(result["rows"])
    click.echo(f"{text}: {result['windows']} windows of {seqlen} tokens, {result['tokens']} predicted "
               f"tokens; KL and top-1 against {result['reference']}")
    click.echo(table)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
        (Path(out) / "compare.md").write_text(table + "\n")


@main.command()
@click.argument("path")
def inspect(path):
    """Format, bits per weight and a per-layer table of a saved checkpoint."""
    from .io import inspect_checkpoint
    info = inspect_checkpoint(path)
    layers = info.pop("layers", [])
    for k, v in info.items():
        click.echo(f"{k:16} {v}")
    if layers:
        keys = list(layers[0])
        widths = [max(len(str(k)), *(len(str(r[k])) for r in layers)) for k in keys]
        click.echo("\n" + "  ".join(str(k).ljust(w) for k, w in zip(keys, widths)))
        for r in layers:
            click.echo("  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)))


@main.command()
@click.argument("path")
@click.argument("prompt")
@click.option("--max-new-tokens", default=40, show_default=True)
@click.option("--chat/--no-chat", default=None, help="Wrap the prompt in the tokenizer's chat template "
              "[default: when the tokenizer has one].")
@_kv_cache_options
def generate(path, prompt, max_new_tokens, chat, kv_cache, kv_group_size, kv_residual, kv_keys):
    """Greedy generation from PATH (quantized checkpoint or model source) for PROMPT."""
    import torch
    spec = _kv_spec(kv_cache, kv_group_size, kv_residual, kv_keys)
    model, tokenizer = _load_any(path)
    use_chat = chat if chat is not None else bool(getattr(tokenizer, "chat_template", None))
    if use_chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
    cache = None
    if spec is not None:
        from .modules.kv_cache import QuantizedKVCache
        cache = QuantizedKVCache(model.config, spec)
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, past_key_values=cache,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    click.echo(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    if cache is not None:
        from .modules.kv_cache import kv_memory
        click.echo(kv_memory(cache).summary(f"KV {spec.label()}"), err=True)


@main.command()
def presets():
    """List the named recipes."""
    from .recipes import load_preset, preset_names
    for name in preset_names():
        r = load_preset(name)
        acts = f"  activations {r.activations.label}" if r.activations is not None else ""
        click.echo(f"{name:20} {r.method:10} {r.format.label()}{acts}")


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
