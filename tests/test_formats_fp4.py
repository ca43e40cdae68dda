"""FP4 E2M1: the value of every code, nearest-value encoding against a float64 reference, scaling."""
from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.rtn import rtn
from lowbit.formats import FormatSpec
from lowbit.formats.fp4 import e2m1_levels
from lowbit.formats.levels import level_table

FP4 = FormatSpec(kind="fp", bits=4, group_size=32)


def test_e2m1_values_by_code():
    # The OCP MX spec's table: s e1 e0 m, exponent bias 1, exponent 0 subnormal.
    magnitudes = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    levels = e2m1_levels()
    assert levels[:8].tolist() == magnitudes
    assert levels[8:].tolist() == [-m for m in magnitudes]
    assert torch.signbit(levels[8])  # code 8 is -0


def test_encoder_never_emits_negative_zero_and_maps_each_value_to_its_code():
    table = level_table("fp")
    levels = e2m1_levels()
    assert table.encode(torch.tensor([0.0, -0.0, 0.2, -0.2])).tolist() == [0, 0, 0, 0]
    codes = table.encode(levels).tolist()
    assert codes == [0, 1, 2, 3, 4, 5, 6, 7, 0, 9, 10, 11, 12, 13, 14, 15]
    # Ties go to the lower value: 5.0 lies between 4 and 6, -5.0 between -6 and -4.
    assert table.encode(torch.tensor([5.0, -5.0, 0.25, 2.5])).tolist() == [6, 15, 0, 4]


@pytest.mark.parametrize("shape", [(11, 96), (4, 320)])
def test_codes_are_nearest_values_of_w_over_absmax_sixths(shape):
    g = torch.Generator().manual_seed(shape[1])
    w = torch.randn(*shape, generator=g)
    qw = rtn(w, FP4)
    blocks = w.double().reshape(-1, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 6
    # float32 storage rounds absmax/6 up, at most one float32 step above the float64 value.
    assert torch.allclose(qw.scale.double().reshape(-1, 1), scale, rtol=2 ** -23, atol=0)
    assert (qw.scale.double().reshape(-1, 1) >= scale).all()
    x = blocks / qw.scale.double().reshape(-1, 1)
    levels = e2m1_levels()
    nearest = (x.unsqueeze(-1) - levels).abs().argmin(-1)  # first of ties; codes 0 before 8
    assert torch.equal(qw.codes.long().reshape(-1, 32), nearest)
    # Every block's largest magnitude lands on ±6.
    top = blocks.abs().argmax(-1)
    assert (levels[qw.codes.long().reshape(-1, 32).gather(1, top[:, None])].abs() == 6).all()


def test_fp4_spec_label_and_round_trip():
    spec = FormatSpec.from_dict({"kind": "fp", "bits": 4, "group_size": 32, "double_quant": True})
    assert spec.label() == "fp4 e2m1 g32 dq" and spec.sym
    assert FormatSpec.from_dict(spec.to_dict()) == spec
