"""The Hugging Face rollout backend in-process (the Ray actor only wraps it)."""

import pytest
import torch

from culture_rl.config import ModelConfig, TinyModelConfig
from culture_rl.models.loading import build_tiny_model
from culture_rl.rl.experience import Experience
from culture_rl.rl.modeling import response_log_probs
from culture_rl.rl.rollout import HFBackend, SamplingParams

CORPUS = [f"Cue: w{i}\nWhat words come to mind? Answer: a{i}, b{i}, c{i}" for i in range(200)]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    shape = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            vocab_size=300)
    folder = build_tiny_model(ModelConfig(tiny=shape), CORPUS, tmp_path_factory.mktemp("m"), 3)
    return HFBackend(str(folder))


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


def test_greedy_decoding_is_deterministic_whatever_the_seed(backend):
    params = SamplingParams(max_new_tokens=5, greedy=True)
    first = backend.generate(["Cue: w7\n"], params, seed=1)
    second = backend.generate(["Cue: w7\n"], params, seed=99)
    assert torch.equal(first.response_ids, second.response_ids)


def test_vllm_backend_without_vllm_or_a_gpu_is_a_config_error_naming_the_field():
    import importlib.util

    from culture_rl.errors import ConfigError
    from culture_rl.rl.vllm_backend import VLLMBackend

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vLLM and a GPU are here: the backend would start")
    with pytest.raises(ConfigError, match="rollout.backend") as error:
        VLLMBackend("unused-model-path")
    assert error.value.field == "rollout.backend"
