"""GPTQ (Frantar et al., 2022): round one weight matrix column by column, pushing each column's
rounding error onto the columns not yet rounded, weighted by the inverse Hessian of the inputs.

A pure function of ``W (out, in)``, the Hessian ``H = 2 X Xᵀ / n (in, in)`` of the layer's
inputs and a format spec; it knows nothing of models. ``HessianAccumulator`` builds ``H`` from
batches of inputs. All Hessian arithmetic is float32 with TF32 off: the Cholesky factor of a
badly conditioned ``H`` is where precision is lost first.

Act-order uses static groups only: every group's scale and zero are fixed from the original
(unpermuted) weights before the columns are permuted, so a group keeps contiguous columns and
the checkpoint needs no ``g_idx``. The price is that group ranges do not see the error that
earlier columns pushed into them.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..formats import FormatSpec, dequantize
from ..formats.double_quant import double_quantize
from ..formats.integer import qparams_from_range, scale_dtype, to_blocks
from ..formats.levels import tensor_global_scale
from .levels import LevelGrid, level_scales
from .quantized_weight import QuantizedWeight
from .rtn import ClipSearch, search_block_range


class HessianError(InputError):
    """The Hessian stayed not positive definite after the bounded number of dampening retries."""


@dataclass(frozen=True)
class GPTQParams:
    """What the pure function needs (the recipe step ``GPTQConfig`` carries the same fields).

    ``damp``: fraction of the mean Hessian diagonal added to the diagonal; ``damp_retries``: how
    many times a failed Cholesky is retried with ten times more dampening.
    """

    block_size: int = 128
    damp: float = 0.01
    damp_retries: int = 4
    act_order: bool = False
    static_groups: bool = False
    clip: ClipSearch | None = None

    def __post_init__(self):
        if self.block_size < 1 or not self.damp > 0 or self.damp_retries < 0:
            raise InputError(f"invalid GPTQ parameters: block_size {self.block_size}, damp "
                             f"{self.damp}, damp_retries {self.damp_retries}")


class HessianAccumulator:
    """Running ``H = 2/n Σ x xᵀ`` over batches of inputs ``x (..., in)``, in float32."""

    CHUNK_ROWS = 2048

    def __init__(self, in_features: int, device=None):
        self.sum_xxt = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n = 0

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.sum_xxt.device)
        if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
            # Products of two 16-bit floats are exact in float32, so a tensor-core GEMM that
            # accumulates in float32 gives what the float32 GEMM of the widened inputs gives,
            # about ten times faster (the 14336-wide down_proj Hessian dominated a GPU block).
            # In row chunks: the float32 product is a new tensor, and a whole one would be a
            # second 0.8 GiB (in, in) matrix for a 14336-wide input.
            xt = x.t()
            for r0 in range(0, xt.shape[0], self.CHUNK_ROWS):
                rows = self.sum_xxt[r0:r0 + self.CHUNK_ROWS]
                rows.copy_(torch.addmm(rows, xt[r0:r0 + self.CHUNK_ROWS], x, out_dtype=torch.float32))
        elif x.is_cuda or self.sum_xxt.shape[0] < 2 * self.MIN_TRIANGLE_BLOCK:
            with fp32_highest():
                xf = x.float()
                self.sum_xxt.addmm_(xf.t(), xf)
        else:
            self._add_upper_blocks(x.float())
        self.n += x.shape[0]

    # On a CPU the Hessian update is as costly as the block's forward (a 1536-wide input: 2.4M
    # multiply-adds per token against the block's 3.5M), and compute-bound. xᵀx is symmetric, so
    # only the blocks on and above the diagonal are multiplied (with 6 blocks, 21 of 36) and the
    # lower ones are mirrored once, in hessian(). About six blocks along the width, 64 to 256
    # wide: measured on the 2-core CPU, 2048 tokens, float32, 1536 wide: 41.1 ms for the full
    # product, 25.8 ms in blocks of 256, 26.2 in blocks of 128; 576 wide: 5.95 ms full, 4.59 in
    # blocks of 256, 3.76 in blocks of 96.
    MIN_TRIANGLE_BLOCK, MAX_TRIANGLE_BLOCK = 64, 256

    def _triangle_block(self, n: int) -> int:
        return min(self.MAX_TRIANGLE_BLOCK, max(self.MIN_TRIANGLE_BLOCK, -(-n // 6 // 32) * 32))

    def _add_upper_blocks(self, xf: torch.Tensor) -> None:
        n = xf.shape[1]
        step = self._triangle_block(n)
        edges = list(range(0, n, step)) + [n]
        if edges[-1] - edges[-2] < step // 2:
            edges.pop(-2)  # no thin last block: fold it into the one before
        xt = xf.t()
        for a, b in zip(edges[:-1], edges[1:]):
            # Rows a:b against every column from a on: one GEMM per block row, (b-a) x (n-a).
            self.sum_xxt[a:b, a:].addmm_(xt[a:b], xf[:, a:])
        self._edges = edges

    _edges: list[int] | None = None

    def _mirror_upper(self) -> None:
        """Copy the blocks above the diagonal to below it, in place (no second (in, in) matrix)."""
        if self._edges is None:
            return
        for a, b in zip(self._edges[:-1], self._edges[1:]):
            self.sum_xxt[b:, a:b].copy_(self.sum_xxt[a:b, b:].t())
        self._edges = None

    def hessian(self) -> torch.Tensor:
        """The Hessian, made in place from the running sum: call it once, after the last batch
        (a second (in, in) copy would cost 0.8 GiB for a 14336-wide layer)."""
        if self.n == 0:
            raise InputError("no calibration inputs reached this layer: its Hessian is empty")
        if self.sum_xxt is None:
            raise RuntimeError("HessianAccumulator.hessian() was already taken")
        self._mirror_upper()
        H, self.sum_xxt = self.sum_xxt.mul_(2.0 / self.n), None
        return H


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device):
    """GPTQ is thousands of small ops plus a few small factorizations: on a CPU, intra-op
    threads gain little there and, on a busy machine, each op can stall waiting for its other
    threads (measured on a loaded 2-core machine, one 576x1536 matrix: 36 s with 2 threads, of
    which 29 s in cholesky_inverse, against 1.4 s with one)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def fp32_highest():
    """Full float32 matmuls (no TF32 on CUDA) for the duration of the block."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def output_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """Mean over inputs of ``‖(W − Q) x‖²``, i.e. ``tr(D H Dᵀ) / 2`` with ``D = W − Q``."""
    with fp32_highest():
        D = (W.float() - Q.float())
        return float(((D @ H) * D).sum() / 2)


def _group_params(W: torch.Tensor, spec: FormatSpec, dtype, clip: ClipSearch | None,
                  global_scale: torch.Tensor | None = None):
    """Scale and zero of every block of ``W (out, in)``, each ``(rows, n_blocks)``; ``global_scale``:
    the whole matrix's per-tensor scale (NVFP4), fixed before any column is rounded."""
    if spec.is_lookup:  # absmax scales of a level table (NF4, FP4), no zero
        return level_scales(W, spec, dtype, clip, global_scale)[0], None
    blocks = to_blocks(W, spec)
    if clip is None:
        lo, hi = blocks.amin(-1), blocks.amax(-1)
    else:
        lo, hi, _ = search_block_range(blocks, spec, clip, dtype)
    return qparams_from_range(lo, hi, spec, dtype)


def _inverse_cholesky(work: list, damp: float, retries: int, name: str):
    """Upper Cholesky factor of ``(H + λI)⁻¹`` with λ = damp · mean(diag H); returns it and damp.

    ``work``: a one-item list holding H, which is damped in place and dropped once factored,
    so that at most three (in, in) matrices are alive here counting the caller's undamped one.
    """
    H = work.pop()
    mean_diag = torch.mean(torch.diag(H))
    added = 0.0
    for _ in range(retries + 1):
        H.diagonal().add_(damp * mean_diag - added)
        added = damp * mean_diag
        L, info = torch.linalg.cholesky_ex(H)
        if info.item() == 0 and torch.isfinite(L).all():
            del H
            Hinv = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info.item() == 0 and torch.isfinite(U).all():
                return U, damp
            # Rare: H factored but its inverse did not; rebuild the damped H and retry.
            del U
            H = torch.linalg.inv(Hinv)
            del Hinv
        else:
            del L
        damp *= 10
    raise HessianError(
        f"{name}: Hessian is not positive definite even with dampening {damp / 10:g} "
        f"(after {retries} retries); check the calibration inputs for NaN/Inf or raise damp")


def gptq(W: torch.Tensor, H: torch.Tensor, spec: FormatSpec, params: GPTQParams = GPTQParams(),
         name: str = "weight", range_weight: torch.Tensor | None = None) -> QuantizedWeight:
    """Quantize ``W (out, in)`` given ``H (in, in)``; returns codes, scale, zero and stats.

    ``range_weight`` (W's shape): take the static group ranges from it instead of W, e.g. AWQ's
    clipped weights, so that the clipping error is compensated like any rounding error. Dynamic
    groups are set from the updated columns, so without static groups W is replaced by it.

    Stats: ``proxy_err`` (mean ‖(W − Ŵ)x‖² under the undamped H), ``proxy_err_rel`` (over
    mean ‖Wx‖²), ``damp`` (the dampening that worked), ``dead_inputs`` and ``seconds``.
    """
    start = time.perf_counter()
    out_f, in_f = W.shape
    spec.check_fits(out_f, in_f, name=name)
    if H.shape != (in_f, in_f):
        raise InputError(f"{name}: Hessian shape {tuple(H.shape)} does not match in_features {in_f}")
    if spec.group_size == 0:
        raise InputError(f"{name}: GPTQ needs per-group or per-channel scales, not per-tensor")
    if spec.double_quant and not (spec.group_size < 0 or params.static_groups or params.act_order):
        # Double quantization fits 8-bit codes to all of a matrix's block scales at once.
        raise InputError(f"{name}: {spec.label()} needs every block scale before rounding: use "
                         f"static groups (static_groups or act_order)")
    group = spec.group_size if spec.group_size > 0 else in_f
    static = spec.group_size < 0 or params.static_groups or params.act_order
    if range_weight is not None:
        if range_weight.shape != W.shape:
            raise InputError(f"{name}: range weight shape {tuple(range_weight.shape)} is not {tuple(W.shape)}")
        if not static:
            W, range_weight = range_weight, None
    # Double-quantized scales decode to float32 whatever the weight's dtype.
    dtype = torch.float32 if spec.double_quant else scale_dtype(spec, W.dtype)
    with fp32_highest(), _one_thread_on_cpu(W.device):
        W0 = W.detach().float()
        H0 = H.detach().float()
        # An input that is always zero carries no information: its weights are free, so set
        # them to zero and give H a unit diagonal there to keep it invertible.
        dead = torch.diag(H0) == 0
        W = W0.clone()
        W[:, dead] = 0

        # Static params (per-channel, or groups fixed up front) come from the weights before any
        # error has been pushed into them; dynamic groups are set when their first column comes.
        R = W
        if range_weight is not None:
            R = range_weight.detach().float().clone()
            R[:, dead] = 0
        n_groups = in_f // group
        scale = torch.empty(out_f, n_groups, dtype=dtype, device=W.device)
        zero = None if spec.sym else torch.empty(out_f, n_groups, dtype=torch.int32, device=W.device)
        global_scale = tensor_global_scale(R, spec) if spec.is_lookup else None
        if static:
            s, z = _group_params(R, spec, dtype, params.clip, global_scale)
            scale.copy_(s)
            if zero is not None:
                zero.copy_(z)
        scale_dq = None
        if spec.double_quant:  # round the columns against the scales as they will be stored
            scale_dq = double_quantize(scale)
            scale.copy_(scale_dq.decode())
        grid = LevelGrid(scale, None, spec, global_scale) if spec.is_lookup else _Grid(scale, zero, spec)

        perm = None
        if params.act_order:
            diag = torch.diag(H0).clone()
            diag[dead] = 1
            perm = torch.argsort(diag, descending=True)
        # One working copy of H besides the caller's (each (in, in) float32 copy of a 14336-wide
        # down_proj is 0.8 GiB): permuted in one gather, its dead diagonal set to 1, then damped
        # in place and released by _inverse_cholesky once factored.
        if perm is not None:
            W = W[:, perm]
            work = [H0[perm[:, None], perm[None, :]]]
            work[0].diagonal()[dead[perm]] = 1
        else:
            work = [H0.clone()]
            work[0].diagonal()[dead] = 1
        col_group = ((perm if perm is not None else torch.arange(in_f)) // group).tolist()

        U, damp = _inverse_cholesky(work, params.damp, params.damp_retries, name)
        codes = torch.empty(out_f, in_f, dtype=torch.float32, device=W.device)
        # A dynamic group must not straddle a lazy block, so that its range is read with every
        # update pushed into it so far.
        block = params.block_size if static else -(-params.block_size // group) * group
        _column_loop(W, U, codes, grid, col_group, block, 0 if static else group, dtype, params.clip)

        if perm is not None:
            codes = codes[:, torch.argsort(perm)]
        codes = codes.to(torch.uint8)
        Q = dequantize(codes, scale, zero, spec)
        err = output_error(W0, Q, H0)
        ref = output_error(W0, torch.zeros_like(W0), H0)
    stats = {"proxy_err": err, "proxy_err_rel": err / ref if ref > 0 else 0.0, "damp": damp,
             "dead_inputs": int(dead.sum()), "seconds": round(time.perf_counter() - start, 4)}
    return QuantizedWeight(codes, scale, zero, spec, stats, scale_dq=scale_dq, global_scale=global_scale)


class _Grid:
    """Scale and zero of every group, with the copies the column loop reads: codes are rounded
    from a float64 quotient, as lowbit.formats.integer rounds them (so ties break the same way),
    and the dequantized value is formed in float32, as ``dequantize`` forms it."""

    global_scale = None  # integer formats have no per-tensor scale

    def __init__(self, scale: torch.Tensor, zero: torch.Tensor | None, spec: FormatSpec):
        self.scale, self.zero, self.spec = scale, zero, spec
        self.scale_d = scale.double()
        self.zero_d = zero.double() if zero is not None else torch.full_like(self.scale_d, 1 << (spec.bits - 1))
        self.scale_f, self.zero_f = self.scale_d.float(), self.zero_d.float()

    def set_group(self, g: int, scale: torch.Tensor, zero: torch.Tensor | None) -> None:
        self.scale[:, g] = scale
        self.scale_d[:, g] = scale.double()
        self.scale_f[:, g] = scale.float()
        if zero is not None:
            self.zero[:, g] = zero
            self.zero_d[:, g] = zero.double()
            self.zero_f[:, g] = zero.float()

    def round_column(self, w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (as float32) and dequantized values of column ``w (out,)`` in group ``g``."""
        q = torch.round(w.double() / self.scale_d[:, g]).add_(self.zero_d[:, g])
        q = q.clamp_(0, self.spec.qmax).float()
        return q, (q - self.zero_f[:, g]) * self.scale_f[:, g]


def _column_loop(W, U, codes, grid: _Grid, col_group: list[int], block: int, dynamic_group: int,
                 dtype, clip) -> None:
    """Round the columns of ``W (out, in)`` in order into ``codes``, pushing each column's error
    onto the later columns through the upper Cholesky factor ``U`` of H⁻¹, lazily per ``block``
    columns. ``dynamic_group > 0``: each group's range is set when its first column comes."""
    if _use_fused_loop(W) and isinstance(grid, _Grid):  # the fused loop knows integer grids only
        _fused_column_loop(W, U, codes, grid, col_group, block, dynamic_group, dtype, clip)
        return
    in_f = W.shape[1]
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = col_group[col]
            if dynamic_group and col % dynamic_group == 0:
                s, z = _group_params(W1[:, i:i + dynamic_group], grid.spec, dtype, clip, grid.global_scale)
                grid.set_group(g, s[:, 0], None if z is None else z[:, 0])
            w = W1[:, i]
            q, dq = grid.round_column(w, g)
            codes[:, col] = q
            err = (w - dq) / U1[i, i]
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1)
            Err1[:, i] = err
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1)


# None: the fused Triton loop on CUDA tensors when Triton imports, the PyTorch loop otherwise.
# Tests set it to force one path (the Triton interpreter runs the fused loop on CPU tensors).
FUSED_LOOP: bool | None = None


def _use_fused_loop(W: torch.Tensor) -> bool:
    if FUSED_LOOP is not None:
        return FUSED_LOOP
    if not W.is_cuda:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _fused_column_loop(W, U, codes, grid: _Grid, col_group: list[int], block: int,
                       dynamic_group: int, dtype, clip) -> None:
    """``_column_loop`` with each lazy block's column walk in one Triton launch
    (``kernels.triton_gptq``). With dynamic groups each lazy block is one group, so the group's
    range is read from columns that hold every update pushed into them so far."""
    from ..kernels.triton_gptq import gptq_block_columns

    in_f = W.shape[1]
    if dynamic_group:
        block = dynamic_group
    groups = torch.tensor(col_group, dtype=torch.int32, device=W.device)
    err = torch.empty(W.shape[0], block, dtype=torch.float32, device=W.device)
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        if dynamic_group:
            s, z = _group_params(W[:, i1:i2], grid.spec, dtype, clip, grid.global_scale)
            grid.set_group(col_group[i1], s[:, 0], None if z is None else z[:, 0])
        gptq_block_columns(W, U, codes, err, grid.scale_d, grid.zero_d, grid.scale_f, grid.zero_f,
                           groups, i1, i2 - i1, grid.spec.qmax)
        if i2 < in_f:
            W[:, i2:].addmm_(err[:, :i2 - i1], U[i1:i2, i2:], alpha=-1)
