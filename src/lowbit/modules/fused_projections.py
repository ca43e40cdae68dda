"""Projections that read the same input (q/k/v, gate/up) computed as one wider linear.

A decode step multiplies one token (or a few) by every projection, and each multiplication is a
read of the whole weight plus a kernel launch. Llama-3-8B's k and v projections are a quarter of
q's rows, so per block they are three reads and three launches for attention and two for the
MLP, where one read of the rows stacked together streams better and launches once (the
compiled W4A16 decode profile, ``bench/results/e2e-profile-compiled.md``, spends about 11 µs per
linear, where reading the bytes of Llama's k projection alone takes under 1 µs).

``fuse_projections(model)`` finds the groups through the architecture tables (the linears a
norm feeds: q/k/v, gate/up), builds one module whose rows are the members' rows in order, and
puts a ``ProjectionSlice`` where each member was. The model's own forward is unchanged: the
first member called computes the stacked product and keeps it; the others return their columns
of it as long as they receive the very same input tensor (compared by identity, which also holds
while ``torch.compile`` traces and while a CUDA graph is captured). The last member drops the
kept product, so nothing outlives the forward.

Members fuse when they are all plain ``nn.Linear``, all ``QuantLinear`` of one integer format
with per-row scales, or all ``W8A8Linear`` / all ``FP8Linear`` with dynamic activations or one
equal static input scale (stacking rows then stacks codes, scales and zeros unchanged, and the
activations are quantized once for the group). Anything else (per-tensor or coded weight scales,
different static input scales, LLM.int8() layers) stays as it is. The fused model is for running: its state dict has the stacked weights under new
names, so save the model before fusing it (``lowbit``'s checkpoint writer refuses a fused one).
"""
from __future__ import annotations

import torch
from torch import nn

from .fp8_linear import FP8Linear
from .quant_linear import QuantLinear
from .w8a8_linear import W8A8Linear


class FusedProjection(nn.Module):
    """The stacked linear and the run-time hand-over between its members."""

    def __init__(self, linear: nn.Module, sizes: list[int]):
        super().__init__()
        self.linear = linear
        self.sizes = list(sizes)
        self._input = None
        self._parts = None
        self._taken = 0

    def take(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if self._input is not x:  # the first member of this forward (or another input)
            self._parts = self.linear(x).split(self.sizes, dim=-1)
            self._input = x
            self._taken = 0
        part = self._parts[index]
        self._taken += 1
        if self._taken == len(self.sizes):  # every member served: keep nothing alive
            self._input = self._parts = None
        return part


class ProjectionSlice(nn.Module):
    """Stands where one member projection was; returns its columns of the fused product."""

    def __init__(self, fused: FusedProjection, index: int, in_features: int, out_features: int):
        super().__init__()
        # Not a submodule: the fused module is registered once, on the block (see
        # fuse_projections), and every slice only points at it.
        object.__setattr__(self, "fused", fused)
        self.index = index
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.take(x, self.index)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, part={self.index}"


def _stacked_linear(members: list[nn.Linear]) -> nn.Linear:
    w = members[0].weight
    out = nn.Linear(members[0].in_features, sum(m.out_features for m in members),
                    bias=any(m.bias is not None for m in members), device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([m.weight for m in members]))
        if out.bias is not None:
            out.bias.copy_(torch.cat([m.bias if m.bias is not None else
                                      torch.zeros(m.out_features, dtype=w.dtype, device=w.device)
                                      for m in members]))
    return out


def _quant_fusable(members: list[nn.Module]) -> bool:
    first = members[0]
    if type(first) is not QuantLinear:
        return False
    spec = first.spec
    return (spec.kind == "int" and spec.group_size != 0 and not spec.double_quant
            and not spec.coded_scales
            and all(type(m) is QuantLinear and m.spec == spec and m.in_features == first.in_features
                    and m.weight_scale.dtype == first.weight_scale.dtype for m in members))


def _stacked_quant(members: list[QuantLinear]) -> QuantLinear:
    first = members[0]
    dtype = first.weight_scale.dtype
    has_bias = any(m.bias is not None for m in members)
    out = QuantLinear(first.in_features, sum(m.out_features for m in members), first.spec,
                      bias=has_bias, dtype=dtype, device=first.weight_packed.device)
    with torch.no_grad():
        out.weight_packed.copy_(torch.cat([m.weight_packed for m in members]))
        out.weight_scale.copy_(torch.cat([m.weight_scale for m in members]))
        if out.weight_zero is not None:
            out.weight_zero.copy_(torch.cat([m.weight_zero for m in members]))
        if has_bias:
            out.bias.copy_(torch.cat([m.bias.to(dtype) if m.bias is not None else
                                      torch.zeros(m.out_features, dtype=dtype, device=out.bias.device)
                                      for m in members]))
    return out


def _act_fusable(members: list[nn.Module]) -> bool:
    first = members[0]
    return (type(first) in (W8A8Linear, FP8Linear)
            and all(type(m) is type(first) and m.static == first.static
                    and m.weight_scale.dtype == first.weight_scale.dtype for m in members)
            and (not first.static or all(torch.equal(m.input_scale, first.input_scale)
                                         for m in members)))


def _stacked_act(members: list[nn.Module]) -> nn.Module:
    first = members[0]
    rows = sum(m.out_features for m in members)
    has_bias = any(m.bias is not None for m in members)
    out = type(first)(first.in_features, rows, bias=has_bias, static=first.static, device="meta")
    out.weight_codes = torch.cat([m.weight_codes for m in members])
    out.weight_scale = torch.cat([m.weight_scale for m in members])
    if first.static:
        out.input_scale = first.input_scale.clone()
    if has_bias:
        dtype = next(m.bias.dtype for m in members if m.bias is not None)
        out.bias = nn.Parameter(torch.cat([
            m.bias.detach().to(dtype) if m.bias is not None else
            torch.zeros(m.out_features, dtype=dtype, device=out.weight_codes.device)
            for m in members]), requires_grad=False)
    return out


def stack_members(members: list[nn.Module]) -> nn.Module | None:
    """One module computing every member's rows in order, or None if they do not stack."""
    if len(members) < 2 or any(m.in_features != members[0].in_features for m in members):
        return None
    if all(type(m) is nn.Linear for m in members):
        if len({(m.weight.dtype, m.weight.device) for m in members}) != 1:
            return None
        return _stacked_linear(members)
    if _quant_fusable(members):
        return _stacked_quant(members)
    if _act_fusable(members):
        return _stacked_act(members)
    return None


def fuse_projections(model: nn.Module) -> list[str]:
    """Fuse every group of projections that read one norm's output, in place; returns the fused
    modules' names (``<block>.fused_<first member>``; empty if nothing fused)."""
    from ..arch.lookup import arch_for, blocks_of, get_module, set_module
    from .input_hadamard import has_input_hadamard

    arch = arch_for(model)
    fused_names = []
    for i, block in enumerate(blocks_of(model, arch)):
        for group in arch.groups:
            if group.feeder_kind == "linear" or len(group.linears) < 2:
                continue  # only members reading one shared input fuse
            members = [get_module(block, name) for name in group.linears]
            # A member that rotates its inputs online (input_hadamard) reads another input.
            if any(m is None or isinstance(m, ProjectionSlice) or has_input_hadamard(m) for m in members):
                continue
            stacked = stack_members(members)
            if stacked is None:
                continue
            fused = FusedProjection(stacked, [m.out_features for m in members])
            attr = "fused_" + group.linears[0].replace(".", "_")
            block.add_module(attr, fused)
            for index, (name, m) in enumerate(zip(group.linears, members)):
                set_module(block, name, ProjectionSlice(fused, index, m.in_features, m.out_features))
            fused_names.append(f"{arch.blocks}.{i}.{attr}")
    return fused_names


def is_fused(model: nn.Module) -> bool:
    return any(isinstance(m, ProjectionSlice) for m in model.modules())
