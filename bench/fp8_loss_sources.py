"""Where FP8 W8A8's loss on SmolLM2 comes from: fake-quantized variants on the first lee-512
windows, weights and inputs apart, and with E4M3's range taken away.

    .venv/bin/python bench/fp8_loss_sources.py                       # 12 windows, ~2 minutes
    .venv/bin/python bench/fp8_loss_sources.py --model DIR --max-windows 24

Every decoder linear's weight is replaced by its rounded copy and its input rounded in a forward
pre-hook (float32 arithmetic throughout; ``lm_head`` stays float, as in the presets). Variants are
``inputs/weights``:

- inputs: ``none``; ``token`` (E4M3, one scale ``absmax/448`` per token: ``w8a8-fp8``'s inputs);
  ``group`` (E4M3, one scale per 64 inputs of a token); ``mant`` (the value rounded to a 3-bit
  mantissa, any exponent: E4M3 without its range limits or subnormals);
- weights: ``none``; ``channel`` (E4M3, one scale per output row: ``w8a8-fp8``'s weights);
  ``mant``.

The FP model is the float32 copy bench/fp_copy.py (and bench/quality.py) saves
(``lowbit-out-bench/fp-float32``). Writes ``bench/results/fp8-loss-sources.json`` and ``.md`` (``--out`` elsewhere).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_file import machine  # noqa: E402
from run_record import command_line, utc_now, write_json_and_table  # noqa: E402

VARIANTS = ["token/channel", "none/channel", "token/none", "group/channel", "mant/mant", "token/mant", "mant/channel"]
E4M3_MAX = 448.0


def e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float() * scale


def mantissa3(x: torch.Tensor) -> torch.Tensor:
    """Round to 1 + 3 significant bits, unlimited exponent (half to even on the mantissa grid)."""
    m, e = torch.frexp(x)  # x = m·2^e, |m| in [0.5, 1)
    return torch.ldexp(torch.round(m * 16) / 16, e)


def round_inputs(x: torch.Tensor, mode: str, group: int = 64) -> torch.Tensor:
    x = x.float()
    if mode == "none":
        return x
    if mode == "token":
        return e4m3(x, (x.abs().amax(-1, keepdim=True) / E4M3_MAX).clamp_min(1e-30))
    if mode == "group":
        g = x.reshape(*x.shape[:-1], x.shape[-1] // group, group)
        return e4m3(g, (g.abs().amax(-1, keepdim=True) / E4M3_MAX).clamp_min(1e-30)).reshape(x.shape)
    if mode == "mant":
        return mantissa3(x)
    raise ValueError(mode)


def round_weights(w: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "none":
        return w
    if mode == "channel":
        return e4m3(w, (w.abs().amax(1, keepdim=True) / E4M3_MAX).clamp_min(1e-30))
    if mode == "mant":
        return mantissa3(w)
    raise ValueError(mode)


@torch.no_grad()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=HERE.parent / "lowbit-out-bench" / "fp-float32")
    ap.add_argument("--max-windows", type=int, default=12)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lowbit.data.text import lee_text
    from lowbit.data.windows import eval_windows
    from lowbit.eval.evaluate import evaluate

    if not (a.model / "config.json").exists():
        ap.error(f"no float model at {a.model}: make it with `.venv/bin/python bench/fp_copy.py` "
                 "(or pass --model DIR)")
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    windows = eval_windows(tok, lee_text(), 512, max_windows=a.max_windows)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    weights = {n: m.weight.data.clone() for n, m in linears}
    fp = evaluate(model, windows, progress=False).ppl
    rows = []
    for v in a.variants.split(","):
        inputs, wmode = v.split("/")
        hooks = []
        for n, m in linears:
            m.weight.data = round_weights(weights[n], wmode)
            hooks.append(m.register_forward_pre_hook(
                lambda _m, args, mode=inputs: (round_inputs(args[0], mode).to(args[0].dtype),)))
        t = time.perf_counter()
        ppl = evaluate(model, windows, progress=False).ppl
        for h in hooks:
            h.remove()
        for n, m in linears:
            m.weight.data = weights[n]
        rows.append({"variant": v, "inputs": inputs, "weights": wmode, "ppl": ppl, "delta_ppl": ppl / fp - 1,
                     "seconds": time.perf_counter() - t})
        print(json.dumps(rows[-1]), flush=True)
    doc = {"machine": machine(), "torch": torch.__version__,
           "date": utc_now(),
           "command": command_line(".venv/bin/python bench/fp8_loss_sources.py", sys.argv[1:] if argv is None else argv),
           "windows": int(windows.shape[0]), "fp_ppl": fp, "rows": rows}
    lines = ["| inputs / weights | PPL | ΔPPL |", "| --- | --- | --- |", f"| FP | {fp:.2f} | — |"]
    lines += [f"| {r['variant']} | {r['ppl']:.2f} | {r['delta_ppl']:+.1%} |" for r in rows]
    table = "\n".join(lines)
    write_json_and_table(a.out, "fp8-loss-sources", doc, "FP8 W8A8 on SmolLM2: where the loss comes from",
                         f"{doc['date']} · {doc['machine']} · torch {doc['torch']} · `{doc['command']}` · "
                         f"first {doc['windows']} lee-512 windows", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
