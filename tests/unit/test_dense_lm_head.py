"""The CPU LM head swapped into TRL's SFTTrainer (culture_rl.train.lm_head.use_dense_lm_head) gives
the loss, metrics and LoRA gradients of TRL's own chunked head."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from datasets import Dataset
    from trl import SFTTrainer

    from culture_rl.config import DeepSpeedConfig, LoraConfig, ModelConfig, TinyModelConfig, \
        TrainConfig
    from culture_rl.models.loading import build_tiny_model, load_model, load_tokenizer, \
        peft_lora_config
    from culture_rl.train.sft import TrainJob, sft_args

    folder = tmp_path_factory.mktemp("dense_head")
    words = [f"w{i}" for i in range(40)]
    corpus = [f"cue {w}: answer {w} {w} end" for w in words] * 3
    shape = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            vocab_size=300)
    path = str(build_tiny_model(ModelConfig(tiny=shape), corpus, folder / "tiny", 0))
    rows = [{"prompt": f"cue {w}: ", "completion": f"answer {w} {w} end"} for w in words]
    lora = LoraConfig(target_modules=["all-linear"])
    job = TrainJob(stage="check", stage_dir=str(folder / "stage"), model_path=path,
                   train=TrainConfig(max_steps=2, micro_batch_size=8, eval_each_epoch=False),
                   deepspeed=DeepSpeedConfig(zero_stage=0), lora=lora, train_rows=rows)
    args = sft_args(job, 1, False, str(folder / "scratch"), use_deepspeed=False)
    return SFTTrainer(model=load_model(path), args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=load_tokenizer(path), peft_config=peft_lora_config(lora))


def test_dense_head_matches_trls_chunked_head(trainer):
    from culture_rl.train.lm_head import use_dense_lm_head

    base = trainer.model.get_base_model()
    chunked = base.__dict__.get("forward")
    assert chunked is not None, "TRL no longer patches the model's forward: revisit the swap"
    assert use_dense_lm_head(trainer)
    dense = base.__dict__["forward"]
    assert dense is not chunked
    batch = next(iter(trainer.get_train_dataloader()))
    results = {}
    for name, forward in (("chunked", chunked), ("dense", dense)):
        base.forward = forward
        trainer.model.zero_grad()
        torch.manual_seed(0)  # the same LoRA dropout masks in both passes
        out = trainer.model(**batch, fused_lm_head=True)
        loss = -out.log_probs.sum() / out.label_mask.sum()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters()
                           if p.grad is not None])
        results[name] = (float(loss.detach()), grads, float(out.entropy.sum()), int(out.is_top1.sum()),
                         out.label_mask.clone())
    (l1, g1, e1, t1, m1), (l2, g2, e2, t2, m2) = results["chunked"], results["dense"]
    assert torch.equal(m1, m2) and m1.any()
    assert l1 == pytest.approx(l2, rel=1e-5)
    assert e1 == pytest.approx(e2, rel=1e-4)
    assert t1 == t2
    assert g1.norm() > 0
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4)
