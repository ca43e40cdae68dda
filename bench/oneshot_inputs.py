"""What llm-compressor's ``oneshot`` needs to calibrate an in-memory model built from a config
(the GPU benchmarks' random models): a dataset of token ids, a processor, and a config on disk.

``oneshot`` insists on a processor whenever it is given a dataset, and re-reads the model's
config from ``model.name_or_path`` to validate it; neither exists for a model built in memory.
The ids are already tokens, so a one-word tokenizer satisfies the first, and a config saved to a
temporary directory the second. Imported only in the peer's environment.
"""
from __future__ import annotations

import tempfile


def oneshot_inputs(model, calib):
    """``(dataset, processor)`` for ``oneshot(model=model, dataset=..., processor=...)``;
    ``calib``: token ids ``(n, seqlen)``. Points ``model.name_or_path`` at a saved config."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    processor = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), unk_token="<unk>")
    cfg_dir = tempfile.mkdtemp(prefix="oneshot-config-")
    model.config.save_pretrained(cfg_dir)
    model.config._name_or_path = cfg_dir
    model.name_or_path = cfg_dir
    ds = Dataset.from_dict({"input_ids": calib.tolist(),
                            "attention_mask": [[1] * calib.shape[1]] * calib.shape[0]})
    return ds, processor
