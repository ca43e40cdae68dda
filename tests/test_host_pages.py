"""Giving back the resident pages of memory-mapped float weights the walk has replaced."""
from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest
import torch

from lowbit.pipeline.host_pages import release_file_backed

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")


def resident_kib(path) -> int:
    """Resident KiB of this process's mappings of ``path``."""
    total, current = 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's header line
                current = head[5] if len(head) > 5 else ""
            elif head[0] == "Rss:" and current == str(path):
                total += int(head[1])
    return total


def mapped(tmp_path, n_floats: int, offset_floats: int = 0):
    """A float32 tensor memory-mapped privately (copy on write) from a file of random values,
    the way a safetensors checkpoint's weights are, and the values it holds."""
    path = tmp_path / "weights.bin"
    values = np.random.default_rng(0).standard_normal(offset_floats + n_floats).astype(np.float32)
    values.tofile(path)
    arr = np.memmap(path, dtype=np.float32, mode="c")
    return path, arr, torch.from_numpy(arr), torch.from_numpy(values.copy())


def test_pages_of_a_mapped_weight_are_released_and_read_back_unchanged(tmp_path):
    path, _arr, t, values = mapped(tmp_path, 1 << 20)  # 4 MiB
    assert torch.equal(t, values)  # every page read: resident
    before = resident_kib(path)
    assert before >= 4000
    released = release_file_backed([t])
    assert released >= (4 << 20) - 2 * mmap.PAGESIZE
    assert resident_kib(path) <= before - released // 1024
    # A later read faults the file's bytes back in.
    assert torch.equal(t, values)


def test_pages_shared_with_a_kept_tensor_stay(tmp_path):
    path, _arr, t, values = mapped(tmp_path, 1 << 20)
    first, second = t[: 1 << 19], t[1 << 19:]
    assert torch.equal(t, values)
    # ``second`` is kept: only the pages wholly inside ``first`` and not holding ``second``.
    released = release_file_backed([first], keep=[second])
    assert 0 < released <= (2 << 20)
    assert released == (first.numel() * 4) // mmap.PAGESIZE * mmap.PAGESIZE
    # Keeping the very tensor releases nothing.
    assert release_file_backed([second], keep=[second]) == 0
    assert torch.equal(t, values)


def test_a_weight_that_does_not_start_on_a_page_boundary_keeps_its_edge_pages(tmp_path):
    path, _arr, t, values = mapped(tmp_path, 1 << 18, offset_floats=100)
    w = t[100:]
    assert torch.equal(w, values[100:])
    released = release_file_backed([w])
    start = -(-w.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (w.data_ptr() + w.numel() * 4) // mmap.PAGESIZE * mmap.PAGESIZE
    assert released == end - start
    assert torch.equal(w, values[100:])


def test_anonymous_memory_and_non_contiguous_views_are_left_alone(tmp_path):
    assert release_file_backed([torch.randn(1 << 20)]) == 0
    _path, _arr, t, _values = mapped(tmp_path, 1 << 20)
    assert release_file_backed([t.view(1024, 1024).t()]) == 0


def test_a_walk_over_a_memory_mapped_model_releases_its_replaced_weights_and_matches_one_in_memory(tmp_path, monkeypatch):
    """GPTQ of a model loaded from safetensors (its weights map the file) gives back the float
    pages of every block it finished and quantizes exactly as the same model held in memory."""
    import copy

    from transformers import AutoModelForCausalLM

    import lowbit.pipeline.sequential as sequential
    import tiny_checkpoint
    import tiny_models
    from lowbit import FormatSpec, Recipe, quantize_model
    from lowbit.algorithms.gptq_step import GPTQConfig

    path = tiny_checkpoint.write_model_dir(tmp_path / "model")
    mapped_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    in_memory = copy.deepcopy(mapped_model)  # the same weights, in ordinary memory
    released = []

    def counting(tensors, keep=()):
        released.append(release_file_backed(tensors, keep))
        return released[-1]
    monkeypatch.setattr(sequential, "release_file_backed", counting)
    recipe = Recipe(format=FormatSpec(bits=4, sym=False, group_size=32), steps=(GPTQConfig(),))
    ids = tiny_models.input_ids(batch=4, seqlen=32)
    quantize_model(mapped_model, recipe, calib=ids, progress=False)
    from_file = released
    released = []
    quantize_model(in_memory, recipe, calib=ids, progress=False)
    assert len(from_file) == mapped_model.config.num_hidden_layers and sum(from_file) > 0
    assert sum(released) == 0
    for (name, a), (_, b) in zip(mapped_model.state_dict().items(), in_memory.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        probe = tiny_models.input_ids(batch=2, seqlen=16, seed=5)
        assert torch.equal(mapped_model(probe).logits, in_memory(probe).logits)
