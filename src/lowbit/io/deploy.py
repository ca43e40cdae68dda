"""Deployability: which engines and kernels can serve a quantization scheme, for these shapes.

``lowbit quantize`` prints this with the plan, before any time is spent, and again after saving
(``lowbit export`` too), so a scheme no kernel can run is caught while it is cheap to change.

The rules are data: one :class:`KernelRule` per (engine, kernel), each with the source it was
read from. vLLM picks, per layer, the first kernel of its list that can implement it (Machete,
Marlin, ..., Exllama for compressed-tensors and GPTQ; AWQ-Marlin, then the AWQ GEMM kernel), so
a scheme is servable when *one* rule passes. Shapes are checked unsharded (tensor parallelism
divides them further). lowbit's act-order uses static groups: no checkpoint it writes carries a
non-trivial ``g_idx``, so the kernels' act-order limits never bind.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..formats import FormatSpec

MARLIN_GROUPS = (-1, 32, 64, 128)


@dataclass(frozen=True)
class Layer:
    name: str
    out_features: int
    in_features: int
    spec: FormatSpec


@dataclass(frozen=True)
class KernelRule:
    engine: str
    kernel: str
    formats: tuple[str, ...]        # lowbit checkpoint formats the engine reads with this kernel
    sym_bits: tuple[int, ...]       # code widths served without zero points
    asym_bits: tuple[int, ...] = ()  # ... and with zero points
    groups: tuple[int, ...] | None = None  # allowed group sizes (-1: per channel); None: any group
    per_tensor: bool = False
    out_multiple: int = 1
    in_multiple: int = 1
    min_capability: int | None = None   # CUDA compute capability ×10; None: no GPU needed
    only_capability: int | None = None  # the kernel runs on this capability only
    note: str = ""
    kinds: tuple[str, ...] = ("int",)   # code kinds: uniform integers, or lookup tables (nf, fp)

    def device(self) -> str:
        if self.only_capability:
            return f"sm{self.only_capability} only"
        return f"sm{self.min_capability}+" if self.min_capability else "CPU/GPU"

    def why_not(self, layer: Layer) -> str | None:
        spec = layer.spec
        if spec.kind not in self.kinds:
            return f"{spec.label()} codes"
        bits = spec.bits
        if bits not in (self.sym_bits if spec.sym else self.asym_bits):
            return f"{bits}-bit {'sym' if spec.sym else 'asym'}"
        if spec.granularity == "tensor" and not self.per_tensor:
            return "per-tensor scales"
        if spec.granularity != "tensor" and self.groups is not None and spec.group_size not in self.groups:
            return f"group {spec.group_size} not in {list(self.groups)}"
        if layer.out_features % self.out_multiple:
            return f"{layer.name}: out {layer.out_features} % {self.out_multiple} ≠ 0"
        if layer.in_features % self.in_multiple:
            return f"{layer.name}: in {layer.in_features} % {self.in_multiple} ≠ 0"
        return None


# vLLM paths: vllm/model_executor/layers/quantization/...
RULES = (
    # kernels/mixed_precision/machete.py (get_min_capability 90, is_device_capability(90)) and
    # utils/machete_utils.py: types uint4b8/uint8b128, with zero points uint4/uint8; groups
    # [-1, 128]; in % 64, out % 128. Chosen first by choose_mp_linear_kernel.
    KernelRule("vLLM", "Machete", ("compressed-tensors",), (4, 8), (4, 8), (-1, 128),
               out_multiple=128, in_multiple=64, only_capability=90),
    # kernels/mixed_precision/marlin.py (min capability 80) and utils/marlin_utils.py:
    # query_marlin_supported_quant_types: uint4b8/uint8b128, with zero points uint4 only;
    # MARLIN_SUPPORTED_GROUP_SIZES [-1, 32, 64, 128]; GPTQ_MARLIN_MIN_THREAD_N 64 (out),
    # GPTQ_MARLIN_MIN_THREAD_K 128 (in). gptq_marlin serves symmetric GPTQ only (TYPE_MAP keys).
    KernelRule("vLLM", "Marlin", ("compressed-tensors",), (4, 8), (4,), MARLIN_GROUPS,
               out_multiple=64, in_multiple=128, min_capability=80),
    KernelRule("vLLM", "GPTQ-Marlin", ("gptq",), (4, 8), (), MARLIN_GROUPS,
               out_multiple=64, in_multiple=128, min_capability=80),
    # kernels/mixed_precision/exllama.py: min capability 60; uint4b8/uint8b128 (no zero-point
    # types); out % (32 / bits); float16 activations only.
    KernelRule("vLLM", "Exllama", ("compressed-tensors",), (4, 8), (), out_multiple=8,
               min_capability=60, note="fp16 activations"),
    # gptq.py (GPTQConfig): weight bits 2, 3, 4, 8 with zero points (format v1: it adds 1 back);
    # min capability 60; out % pack factor (32 covers every width: 3-bit packs 32 outputs in 3
    # words). Its exllama kernel has no v2 path (use_v2_format
    # False), so gptq-v2 files are not served.
    KernelRule("vLLM", "GPTQ (exllama/gptq_gemm)", ("gptq",), (2, 3, 4, 8), (2, 3, 4, 8),
               out_multiple=32, min_capability=60, note="fp16 activations"),
    # awq_marlin.py: Marlin with zero points (uint4), Marlin groups and shapes, capability 80.
    KernelRule("vLLM", "AWQ-Marlin", ("awq",), (4,), (4,), MARLIN_GROUPS,
               out_multiple=64, in_multiple=128, min_capability=80),
    # awq.py (AWQConfig): 4-bit only, min capability 75; out packed eight to a word.
    KernelRule("vLLM", "AWQ GEMM", ("awq",), (4,), (4,), out_multiple=8, min_capability=75),
    # llama.cpp ggml-common.h: QK4_0 = QK4_1 = QK8_0 = 32 (blocks along the input); lowbit
    # writes other formats as float tensors (served, but not at the quantized size).
    KernelRule("llama.cpp", "Q8_0/Q4_0/Q4_1", ("gguf",), (4, 8), (4,), (32,), in_multiple=32),
    # transformers + compressed-tensors on CPU: decompressed to dense weights while loading
    # (lowbit.io.compressed_tensors docstring); GGUF: dequantized by gguf-py (API-FACTS §2).
    KernelRule("transformers", "dequantized", ("compressed-tensors", "gguf"), (1, 2, 3, 4, 5, 6, 7, 8),
               (1, 2, 3, 4, 5, 6, 7, 8), per_tensor=True, note="dense weights"),
    # compressed-tensors' FP4 unpacker returns bfloat16 weights whatever the model's dtype, so
    # MXFP4/NVFP4 exports load and run in transformers only as bfloat16 models (tests/test_io_ct_fp4.py).
    KernelRule("transformers", "dequantized (bf16 model)", ("compressed-tensors",), (4,), (),
               note="bfloat16 models only", kinds=("fp",)),
    # GPTQModel (qlinear/__init__.py): bits 2/3/4/8, groups [-1, 16, 32, 64, 128], both versions.
    KernelRule("GPTQModel", "torch/triton/exllama", ("gptq", "gptq-v2"), (2, 3, 4, 8), (2, 3, 4, 8),
               (-1, 16, 32, 64, 128)),
    # lowbit itself reads every format it writes (reference kernel anywhere, Triton on CUDA).
    KernelRule("lowbit", "reference/Triton", ("native", "compressed-tensors", "gptq", "gptq-v2", "awq"),
               (2, 3, 4, 8), (2, 3, 4, 8), per_tensor=True),
    # Lookup-table codes (NF4, FP4, MXFP4, NVFP4) run through lowbit's reference kernel
    # (dequantize, then matmul) on any device; no Triton kernel yet.
    KernelRule("lowbit", "reference (lookup table)", ("native", "compressed-tensors"), (4,), (),
               per_tensor=True, kinds=("nf", "fp")),
)


@dataclass(frozen=True)
class Verdict:
    engine: str
    kernel: str
    device: str
    ok: bool
    reason: str | None  # the first layer a kernel cannot take, and why


def check(layers: list[Layer], fmt: str) -> list[Verdict]:
    """Every rule that reads ``fmt`` and codes of the layers' kinds, and whether it serves all ``layers``."""
    kinds = {layer.spec.kind for layer in layers}
    verdicts = []
    for rule in RULES:
        if fmt not in rule.formats or not kinds & set(rule.kinds):
            continue
        reason = next((r for r in (rule.why_not(layer) for layer in layers) if r), None)
        verdicts.append(Verdict(rule.engine, rule.kernel, rule.device(), reason is None, reason))
    return verdicts


NO_RULES = "deploy  no rules for weight+activation schemes yet (only weight-only layers are checked)"


def report_lines(layers: list[Layer], fmt: str) -> list[str]:
    """What ``lowbit quantize``/``export`` print: one line per kernel, then a warning if no
    serving engine (vLLM or llama.cpp) can run the scheme."""
    if not layers:
        return [NO_RULES]
    verdicts = check(layers, fmt)
    lines = [f"deploy  {fmt}:"]
    for v in verdicts:
        mark = "yes" if v.ok else f"no ({v.reason})"
        lines.append(f"  {v.engine:12} {v.kernel:26} {v.device:12} {mark}")
    if not any(v.ok for v in verdicts if v.engine in ("vLLM", "llama.cpp")):
        lines.append(f"warning: no serving engine (vLLM, llama.cpp) runs this scheme as {fmt}")
    return lines


def summary_line(layers: list[Layer], fmt: str) -> str:
    """One line for after a save: the kernels that serve the checkpoint, or a warning."""
    if not layers:
        return NO_RULES
    verdicts = check(layers, fmt)
    served = [f"{v.engine} {v.kernel} ({v.device})" for v in verdicts if v.ok]
    if not any(v.ok for v in verdicts if v.engine in ("vLLM", "llama.cpp")):
        return f"warning: no serving engine (vLLM, llama.cpp) runs this {fmt} checkpoint; " \
               f"readable by {', '.join(served) or 'nothing'}"
    return f"deploy  {fmt}: served by {', '.join(served)}"


def layers_of_model(model: nn.Module) -> list[Layer]:
    """The quantized linears of a model (after quantization or loading)."""
    from .layers import quantized_modules

    return [Layer(n, m.out_features, m.in_features, m.spec) for n, m in quantized_modules(model).items()]


def layers_of_plan(model: nn.Module, recipe) -> list[Layer]:
    """The linears a recipe will quantize, with their formats, before any work is done (none for
    weight+activation recipes, which these rules do not cover)."""
    from ..arch import arch_for, get_module
    from ..quantize import find_targets, linear_weight

    if getattr(recipe, "activations", None) is not None:
        return []
    arch = arch_for(model)
    out = []
    for t in find_targets(model, recipe, arch):
        out_f, in_f = linear_weight(get_module(model, t.name), arch.conv1d).shape
        out.append(Layer(t.name, out_f, in_f, recipe.format_for(t.name)))
    return out


def planned_format(layers: list[Layer], fmt: str) -> str:
    """The format ``save(format=fmt)`` will pick, guessed from the specs ("auto": compressed-tensors
    for integer, MXFP4 and NVFP4 schemes, else native)."""
    from .ct_fp4 import why_not

    if fmt != "auto":
        return fmt
    expressible = all(layer.spec.kind == "int" or (layer.spec.kind == "fp" and why_not(layer.spec) is None)
                      for layer in layers)
    return "compressed-tensors" if expressible else "native"
