"""pretrain.packing decides whether TRL cuts the plain-LM corpus into rows across documents:
'wrapped' does (a document loses its start, e.g. its culture preamble), 'none' and 'bfd' keep
every training row inside one document."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from culture_rl.config import ModelConfig, TinyModelConfig
    from culture_rl.models.loading import build_tiny_model

    folder = tmp_path_factory.mktemp("packing")
    # Documents of 20-40 tokens, rows of 32: wrapped packing must split some of them.
    corpus = [f"You are a person from C{i % 3}.\nQuestion: item {i} " + "word " * (i % 20)
              + f"\nAnswer: {i % 4}" for i in range(60)]
    shape = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                            vocab_size=300)
    return str(build_tiny_model(ModelConfig(tiny=shape), corpus, folder / "tiny", 0)), corpus, \
        folder


def training_rows(tiny, packing: str) -> list[list[int]]:
    from datasets import Dataset
    from trl import SFTTrainer

    from culture_rl.config import DeepSpeedConfig, TrainConfig
    from culture_rl.models.loading import load_model, load_tokenizer
    from culture_rl.train.sft import TrainJob, sft_args

    path, corpus, folder = tiny
    job = TrainJob(stage="pretrain", stage_dir=str(folder / packing), model_path=path,
                   train=TrainConfig(max_steps=1, max_seq_length=32, packing=packing,
                                     eval_each_epoch=False),
                   deepspeed=DeepSpeedConfig(zero_stage=0), lora=None,
                   train_rows=[{"text": doc} for doc in corpus], text_field="text")
    args = sft_args(job, 1, False, str(folder / packing / "scratch"), use_deepspeed=False)
    trainer = SFTTrainer(model=load_model(path), args=args,
                         train_dataset=Dataset.from_list(job.train_rows),
                         processing_class=load_tokenizer(path))
    return [list(r) for r in trainer.train_dataset["input_ids"]]


@pytest.mark.parametrize("packing", ["wrapped", "none", "bfd"])
def test_only_wrapped_packing_starts_rows_inside_a_document(tiny, packing):
    from culture_rl.models.loading import load_tokenizer

    path, corpus, _ = tiny
    tokenizer = load_tokenizer(path)
    documents = [tokenizer(doc)["input_ids"] for doc in corpus]
    starts = {tuple(doc[:4]) for doc in documents}
    rows = training_rows(tiny, packing)
    # Each row's first tokens begin a document unless a row was cut out of one.
    cut = sum(tuple(row[:4]) not in starts for row in rows)
    if packing == "wrapped":
        assert cut > 0 and all(len(row) == 32 for row in rows[:-1])
    else:
        assert cut == 0
