"""RTN clipping-search variants on SmolLM2, evaluated in lockstep with the float model.

Chooses RTN's clip defaults on the calibration domain (the last pydoc windows), never on the
evaluation text. Prints one line per variant.

    .venv/bin/python bench/clip_search.py --text builtin:pydoc --windows 8 --bits 4
"""
from __future__ import annotations

import argparse
import copy

from lowbit.algorithms.rtn import ClipSearch
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.data import eval_windows, load_text
from lowbit.eval import evaluate
from lowbit.formats import FormatSpec
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe
from lowbit.sources import DEFAULT_MODEL, load_model

VARIANTS = {
    "none": None,
    "n2-0.5": ClipSearch(20, 0.5, 2.0),
    "n2-0.8": ClipSearch(20, 0.8, 2.0),
    "n2.4-0.8": ClipSearch(20, 0.8, 2.4),
    "n3-0.8": ClipSearch(20, 0.8, 3.0),
    "n4-0.8": ClipSearch(20, 0.8, 4.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default="builtin:pydoc")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--sym", action="store_true")
    a = ap.parse_args()
    fp, tok = load_model(DEFAULT_MODEL)
    windows = eval_windows(tok, load_text(a.text), 512, max_windows=a.windows, last=a.text == "builtin:pydoc")
    fmt = FormatSpec(bits=a.bits, sym=a.sym, group_size=64)
    for name, clip in VARIANTS.items():
        m = copy.deepcopy(fp)
        quantize_model(m, Recipe(fmt, (RTNConfig(clip=clip),)), progress=False)
        r = evaluate(m, windows, reference=fp, progress=False)
        print(f"{a.text} {fmt.label()} clip={name:9} ppl {r.ppl:.3f} (fp {r.ref_ppl:.3f}) "
              f"kl {r.kl:.4f} top1 {r.top1:.4f}", flush=True)


if __name__ == "__main__":
    main()
