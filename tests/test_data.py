"""Text sources and token windows: the BENCHMARK.md protocols, and every bad input as InputError."""
from __future__ import annotations

import json
import random
import sys
import types

import pytest
import torch

from lowbit.data import calibration_windows, eval_windows, load_text, sample_windows, split_windows, token_ids
from lowbit.data import text as text_mod
from lowbit.errors import InputError


class CharTokenizer:
    """One token per character (its code point); records how it was called."""

    def __init__(self):
        self.calls = []

    def __call__(self, text, add_special_tokens=True, verbose=True):
        self.calls.append(add_special_tokens)
        bos = [1] if add_special_tokens else []
        return {"input_ids": bos + [ord(c) for c in text]}


def test_pydoc_text_is_sorted_topics_joined():
    from pydoc_data.topics import topics

    text = load_text("builtin:pydoc")
    first, second = sorted(topics)[:2]
    assert text.startswith(topics[first] + "\n\n" + topics[second])
    assert len(text) == sum(len(v) for v in topics.values()) + 2 * (len(topics) - 1)


def test_lee_text_is_stripped_nonempty_lines():
    text = load_text("builtin:lee")
    parts = text.split("\n\n")
    assert len(parts) > 200
    assert all(p and p == p.strip() for p in parts)


def test_lee_without_gensim_says_how_to_install(monkeypatch):
    real = text_mod.importlib.util.find_spec
    monkeypatch.setattr(text_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gensim" else real(name, *a))
    with pytest.raises(InputError, match=r"pip install gensim"):
        load_text("builtin:lee")


def test_txt_and_jsonl_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello\nworld", encoding="utf-8")
    assert load_text(str(tmp_path / "a.txt")) == "hello\nworld"
    rows = [{"text": "one"}, {"text": "two", "id": 2}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert load_text(str(tmp_path / "b.jsonl")) == "one\n\ntwo"


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("  \n\t\n", "is empty"),
])
def test_empty_text_is_an_error(tmp_path, content, message):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        load_text(str(path))


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON"):
        load_text(str(path))
    path.write_text('{"text": "ok"}\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: .*\"text\""):
        load_text(str(path))


@pytest.mark.parametrize("source, message", [
    ("/no/such/file.txt", "text source not found: /no/such/file.txt"),
    ("builtin:nope", "unknown text source builtin:nope"),
    ("hf:nope", "unknown text source hf:nope"),
    ("hf:wikitext2:nosplit", "no split 'nosplit'"),
])
def test_unknown_sources(source, message):
    with pytest.raises(InputError, match=message):
        load_text(source)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b", encoding="utf-8")
    with pytest.raises(InputError, match="use .txt or .jsonl"):
        load_text(str(path))


def test_hf_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(sys.modules, "datasets", types.ModuleType("datasets"))
    real = text_mod.importlib.util.find_spec
    monkeypatch.setattr(text_mod.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "datasets" else real(name, *a))
    with pytest.raises(InputError, match="unreachable"):
        load_text("hf:wikitext2")


def test_hf_without_datasets_says_how_to_install(monkeypatch):
    real = text_mod.importlib.util.find_spec
    monkeypatch.setattr(text_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "datasets" else real(name, *a))
    with pytest.raises(InputError, match="pip install datasets"):
        load_text("hf:c4")


def test_hf_plumbing_with_a_fake_datasets(monkeypatch):
    """What load_dataset is asked for and how its rows are joined (the hub itself is unreachable here)."""
    calls = []
    fake = types.ModuleType("datasets")

    def load_dataset(path, name=None, split=None, data_files=None):
        calls.append((path, name, split, data_files))
        return [{"text": "a"}, {"text": "b"}]

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(text_mod, "hub_reachable", lambda: True)
    monkeypatch.setattr(text_mod, "offline_by_env", lambda: False)
    real = text_mod.importlib.util.find_spec
    monkeypatch.setattr(text_mod.importlib.util, "find_spec",
                        lambda n, *a: object() if n == "datasets" else real(n, *a))
    assert load_text("hf:wikitext2") == "a\n\nb"
    assert load_text("hf:c4:train") == "a\n\nb"
    assert calls == [("wikitext", "wikitext-2-raw-v1", "test", None),
                     ("allenai/c4", None, "train", {"train": "en/c4-train.00000-of-01024.json.gz"})]

    def broken(*a, **k):
        raise ConnectionError("boom")

    fake.load_dataset = broken
    with pytest.raises(InputError, match="hf:pileval: could not load .*boom"):
        load_text("hf:pileval")


def test_join_limited_stops_after_the_limit():
    assert text_mod._join_limited(iter(["aaaa", "bbbb", "cccc"]), 7) == "aaaa\n\nbbbb"
    assert text_mod._join_limited(iter(["aaaa", "bbbb"]), None) == "aaaa\n\nbbbb"


# ---- windows --------------------------------------------------------------------------------

def test_token_ids_adds_no_special_tokens():
    tok = CharTokenizer()
    ids = token_ids(tok, "abc")
    assert ids.dtype == torch.long and ids.tolist() == [97, 98, 99]
    assert tok.calls == [False]


def test_calibration_windows_follow_the_protocol():
    text = "".join(chr(65 + i % 50) for i in range(1000))
    windows = calibration_windows(CharTokenizer(), text, n_samples=7, seqlen=64, seed=3)
    rng = random.Random(3)
    ids = [ord(c) for c in text]
    expected = []
    for _ in range(7):
        s = rng.randint(0, len(ids) - 64)
        expected.append(ids[s:s + 64])
    assert windows.dtype == torch.long and windows.tolist() == expected
    assert torch.equal(windows, calibration_windows(CharTokenizer(), text, 7, 64, seed=3))
    assert not torch.equal(windows, calibration_windows(CharTokenizer(), text, 7, 64, seed=4))


def test_calibration_window_may_span_the_whole_text():
    ids = torch.arange(10)
    assert sample_windows(ids, 3, 10).tolist() == [list(range(10))] * 3


def test_too_short_calibration_text_says_how_many_tokens():
    with pytest.raises(InputError, match="has 5 tokens; windows of 8 tokens need at least 8"):
        calibration_windows(CharTokenizer(), "hello", n_samples=2, seqlen=8)


def test_eval_windows_drop_the_tail_and_can_take_the_last():
    ids = torch.arange(23)
    assert split_windows(ids, 5).tolist() == [list(range(i, i + 5)) for i in range(0, 20, 5)]
    assert split_windows(ids, 5, max_windows=2).tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert split_windows(ids, 5, max_windows=2, last=True).tolist() == [list(range(10, 15)),
                                                                      list(range(15, 20))]
    assert split_windows(ids, 5, max_windows=99).shape == (4, 5)
    text = "".join(chr(97 + i % 26) for i in range(23))
    assert eval_windows(CharTokenizer(), text, 5).shape == (4, 5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(seqlen=1), "seqlen must be an integer >= 2"),
    (dict(seqlen=50), "has 23 tokens; one window of 50 tokens"),
    (dict(seqlen=5, max_windows=0), "max_windows must be an integer >= 1"),
])
def test_bad_eval_window_requests(kwargs, message):
    with pytest.raises(InputError, match=message):
        split_windows(torch.arange(23), **kwargs)


def test_bad_calibration_counts():
    with pytest.raises(InputError, match="n_samples must be an integer >= 1"):
        sample_windows(torch.arange(100), 0, 10)
