"""The Hugging Face rollout backend in-process (the Ray actor only wraps it)."""

import pytest
import torch

from culture_rl.config import ModelConfig, TinyModelConfig
from culture_rl.models.loading import build_tiny_model
from culture_rl.rl.experience import Experience
from culture_rl.rl.modeling import response_log_probs
from culture_rl.inference.rollout import HFBackend, SamplingParams

CORPUS = [f"Cue: w{i}\nWhat words come to mind? Answer: a{i}, b{i}, c{i}" for i in range(200)]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    shape = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            vocab_size=300)
    return build_tiny_model(ModelConfig(tiny=shape), CORPUS, tmp_path_factory.mktemp("m"), 3)


@pytest.fixture(scope="module")
def backend(model_folder):
    return HFBackend(str(model_folder))


def test_samples_per_prompt_shapes_and_seeded_repeatability(backend):
    params = SamplingParams(samples_per_prompt=3, max_new_tokens=6, batch_size=1)
    out = backend.generate(["Cue: w1\n", "Cue: w22 and more words\n"], params, seed=5)
    assert out.prompt_ids.shape[0] == out.response_ids.shape[0] == 6
    assert out.response_ids.shape[1] <= 6 and len(out.texts) == 6
    # prompts of both batches are left-padded to one width: the real tokens end at the edge
    assert out.prompt_mask[:, -1].all()
    assert (out.prompt_mask[:3].sum(1) < out.prompt_mask[3:].sum(1)).all()
    again = backend.generate(["Cue: w1\n", "Cue: w22 and more words\n"], params, seed=5)
    assert torch.equal(out.response_ids, again.response_ids)


def test_sampling_log_probs_match_a_forward_pass(backend):
    """At temperature 1 and top-p 1 the generator's log-probs are the model's log-probs of the
    sampled tokens: what the trainer recomputes (the controller's logprob_gap)."""
    out = backend.generate(["Cue: w3\n", "Cue: w4\n"],
                           SamplingParams(samples_per_prompt=2, max_new_tokens=5), seed=1)
    exp = Experience(out.prompt_ids, out.prompt_mask, out.response_ids, out.response_mask)
    with torch.no_grad():
        recomputed, _ = response_log_probs(backend.model, exp)
    mask = out.response_mask.bool()
    assert torch.allclose(out.log_probs[mask], recomputed[mask], atol=1e-4)
    assert (out.log_probs[~mask] == 0).all()


def write_calm_export(base_folder, folder, injection: str = "hook"):
    """A CALM export around the tiny base (frozen base, CALM modules saved), its fusion gate
    opened wide (g ~ 0.98, W(z) x 20) so the identity state moves the LM's log-probs."""
    import json

    from safetensors.torch import save_file

    from culture_rl.config.calm import CalmConfig
    from culture_rl.models.calm import build_calm_model, calm_state_dict
    from culture_rl.models.loading import load_model, load_tokenizer

    tree = {"dim": 16, "head_hidden_size": 16, "cross_attention": {"num_heads": 2},
            "moe": {"num_experts": 3, "top_k": 2, "expert_hidden_size": 8},
            "fusion": {"gate_bias_init": 4.0}, "injection": injection}
    config = CalmConfig.model_validate(tree)
    torch.manual_seed(0)
    model = build_calm_model(load_model(base_folder, "float32"), config, 3, 2)
    with torch.no_grad():
        model.calm["fusion"].proj.weight.mul_(20)
    save_file(calm_state_dict(model), str(folder / "calm.safetensors"))
    load_tokenizer(base_folder).save_pretrained(str(folder / "tokenizer"))
    meta = {"calm_config": config.model_dump(mode="json"), "num_cultures": 3, "num_labels": 2,
            "num_concepts": 0, "base": "frozen", "base_model_path": str(base_folder),
            "dtype": "float32"}
    (folder / "calm.json").write_text(json.dumps(meta), "utf-8")
    return folder


@pytest.mark.parametrize("injection", ["hook", "prefix"])
def test_a_calm_policy_is_scored_under_the_identity_it_generated_with(model_folder, tmp_path,
                                                                      injection):
    """A CALM generator reads its identity state from the prompt before the first new token;
    the trainer's log-probs of the sampled response (response_log_probs) must read it from the
    prompt too, or they score another model (issue 22: logprob_gap 0.19 per token)."""
    from culture_rl.rl.modeling import reads_prompt_identity, sequence_inputs
    from culture_rl.rl.ppo import log_probs_of

    backend = HFBackend(str(write_calm_export(model_folder, tmp_path, injection)))
    assert reads_prompt_identity(backend.model)
    out = backend.generate(["Cue: w3\n", "Cue: w22 and more words\n"],
                           SamplingParams(samples_per_prompt=2, max_new_tokens=6), seed=1)
    exp = Experience(out.prompt_ids, out.prompt_mask, out.response_ids, out.response_mask)
    mask = out.response_mask.bool()
    with torch.no_grad():
        recomputed, _ = response_log_probs(backend.model, exp)
        # The identity read over prompt and response: what the trainer computed before.
        logits = backend.model(**sequence_inputs(exp)).logits
    assert torch.allclose(out.log_probs[mask], recomputed[mask], atol=1e-4)
    width = exp.prompt_ids.shape[1]
    whole = log_probs_of(logits[:, width - 1:width - 1 + exp.response_ids.shape[1]],
                         exp.response_ids)
    # The identity read over the whole sequence moves them (per token 5e-3 with the hook, 6e-4
    # with the prefix, measured on this untrained base whose logits are nearly uniform; the
    # prompt's identity agrees to 5e-7), so the check above can fail.
    assert (whole[mask] - out.log_probs[mask]).abs().mean() > 1e-4


def test_reads_prompt_identity_looks_through_wrappers(backend):
    class Engine(torch.nn.Module):  # as a DeepSpeed engine: the model in .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    from culture_rl.models.calm_policy import CalmPolicy
    from culture_rl.rl.modeling import reads_prompt_identity

    assert not reads_prompt_identity(backend.model)
    assert not reads_prompt_identity(Engine(backend.model))
    assert reads_prompt_identity(Engine(CalmPolicy(torch.nn.Linear(1, 1))))


def test_greedy_decoding_is_deterministic_whatever_the_seed(backend):
    params = SamplingParams(max_new_tokens=5, greedy=True)
    first = backend.generate(["Cue: w7\n"], params, seed=1)
    second = backend.generate(["Cue: w7\n"], params, seed=99)
    assert torch.equal(first.response_ids, second.response_ids)


def test_vllm_backend_without_vllm_or_a_gpu_is_a_config_error_naming_the_field():
    import importlib.util

    from culture_rl.core.errors import ConfigError
    from culture_rl.inference.vllm_backend import VLLMBackend

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vLLM and a GPU are here: the backend would start")
    with pytest.raises(ConfigError, match="rollout.backend") as error:
        VLLMBackend("unused-model-path")
    assert error.value.field == "rollout.backend"
