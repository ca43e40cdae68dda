"""``lowbit::weight_only_linear``: the custom operator torch.compile sees instead of the kernels."""
from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.quantized_weight import QuantizedWeight
from lowbit.formats import FormatSpec
from lowbit.kernels.custom_op import call_op
from lowbit.kernels.reference import weight_only_linear
from lowbit.kernels.triton_register import weight_only_linear_cuda
from lowbit.modules import QuantLinear


def layer(spec: FormatSpec, bias: bool, seed: int = 0) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    n, k = 24, 128
    groups = spec.n_groups(k)
    codes = torch.randint(0, spec.qmax + 1, (n, k), generator=g, dtype=torch.uint8)
    scale = (torch.rand(n, groups, generator=g) * 0.02 + 0.005).to(torch.bfloat16)
    zero = None if spec.sym else torch.randint(0, spec.qmax + 1, (n, groups), generator=g,
                                               dtype=torch.int32)
    b = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    return QuantLinear.from_quantized(QuantizedWeight(codes, scale, zero, spec), b)


SPECS = [FormatSpec(bits=4, sym=False, group_size=32), FormatSpec(bits=8, sym=True, group_size=-1),
         FormatSpec(bits=3, sym=False, group_size=64)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label().replace(" ", "-"))
@pytest.mark.parametrize("bias", [False, True])
def test_op_equals_the_reference_kernel(spec, bias):
    q = layer(spec, bias)
    x = torch.randn(2, 3, 128).to(torch.bfloat16)
    assert torch.equal(call_op(x, q), weight_only_linear(x, q))


def test_opcheck_schema_fake_and_autograd_registration():
    q = layer(FormatSpec(bits=4, sym=False, group_size=32), bias=True)
    x = torch.randn(5, 128).to(torch.bfloat16)
    spec = q.spec
    torch.library.opcheck(
        torch.ops.lowbit.weight_only_linear.default,
        (x, q.weight_packed, q.weight_scale, q.weight_zero, q.bias, spec.bits, spec.sym,
         spec.group_size, q.in_features))


def test_compiled_graph_keeps_one_opaque_call_per_linear():
    # The CUDA entry point, fed CPU tensors: while compiling it must route through the operator
    # (whose CPU implementation is the reference), and the graph must not break.
    q = layer(FormatSpec(bits=4, sym=False, group_size=32), bias=True)
    x = torch.randn(4, 128).to(torch.bfloat16)
    seen = []

    def backend(gm, inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    fn = torch.compile(lambda t: torch.relu(weight_only_linear_cuda(t, q)), backend=backend,
                       fullgraph=True)
    out = fn(x)
    assert torch.equal(out, torch.relu(weight_only_linear(x, q)))
    assert sum("lowbit.weight_only_linear" in t for t in seen) == 1, seen


def test_gradients_reach_the_input_and_the_bias():
    q = layer(FormatSpec(bits=4, sym=True, group_size=32), bias=True)
    x = torch.randn(3, 128, dtype=torch.float64, requires_grad=True)
    q = q.double()
    call_op(x, q).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    bias_ref = q.bias.detach().clone().requires_grad_(True)
    w = q.dequantized_weight(torch.float64)
    torch.nn.functional.linear(x_ref, w, bias_ref).square().sum().backward()
    assert torch.allclose(x.grad, x_ref.grad) and torch.allclose(q.bias.grad, bias_ref.grad)
