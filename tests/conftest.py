import copy
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm2_shared():
    """The float SmolLM2-135M and its tokenizer, loaded from the GGUF once per test session.

    Tests must not modify this model: take ``smollm2`` for a private copy.
    """
    from lowbit.sources import DEFAULT_MODEL, load_model
    return load_model(DEFAULT_MODEL)


@pytest.fixture
def smollm2(smollm2_shared):
    """A private copy of the float SmolLM2 (quantize it in place freely) and the tokenizer."""
    model, tokenizer = smollm2_shared
    return copy.deepcopy(model), tokenizer
