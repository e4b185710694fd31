"""The vLLM backend's pure parts (inference/vllm_backend.py). vLLM is not installed here and there
is no GPU, so the engine never starts in these tests; its outputs are stood in for by objects
with the attributes of vLLM's ``RequestOutput`` / ``CompletionOutput`` / ``Logprob``."""

from types import SimpleNamespace

import pytest
import torch

from culture_rl.config import load_config
from culture_rl.core.errors import ConfigError
from culture_rl.config.ppo import VLLM_GPU_MEMORY_UTILIZATION
from culture_rl.inference.vllm_backend import (engine_arguments, prompt_seeds, rollout_from_outputs,
                                               sampled_log_probs, sampling_arguments)


def _logprob(value):
    return SimpleNamespace(logprob=value)


def _request(prompt, samples):
    """samples: (token ids, per-position {token: logprob}, text)."""
    return SimpleNamespace(prompt_token_ids=prompt, outputs=[
        SimpleNamespace(token_ids=ids, logprobs=[{t: _logprob(v) for t, v in pos.items()}
                                                 for pos in lps], text=text)
        for ids, lps, text in samples])


def test_the_sampled_tokens_log_prob_is_read_by_its_id_not_the_dicts_order():
    # With logprobs=k > 0 vLLM also lists the top-k; the sampled token need not come first.
    positions = [{7: _logprob(-0.1), 3: _logprob(-2.5)}, {5: _logprob(-0.7)}]
    assert sampled_log_probs([3, 5], positions) == [-2.5, -0.7]


def test_missing_or_absent_log_probs_are_errors():
    with pytest.raises(RuntimeError, match="position 1 lack the sampled token 9"):
        sampled_log_probs([3, 9], [{3: _logprob(-1.0)}, {5: _logprob(-0.5)}])
    with pytest.raises(RuntimeError, match="logprobs=0"):
        sampled_log_probs([3], None)


def test_outputs_become_a_rollout_in_the_hf_backends_layout():
    outputs = [
        _request([11, 12, 13], [([4, 2], [{4: -0.5}, {2: -0.25}], "a"),
                                ([6], [{6: -1.5}], "b")]),
        _request([21], [([8, 9, 2], [{8: -0.1}, {9: -0.2}, {2: -0.3}], "c"),
                        ([2], [{2: -0.05}], "")]),
    ]
    rollout = rollout_from_outputs(outputs, pad_token_id=0)
    # Row i*n + j is sample j of prompt i, as the controller expects.
    assert rollout.texts == ["a", "b", "c", ""]
    assert rollout.prompt_ids.tolist() == [[11, 12, 13]] * 2 + [[0, 0, 21]] * 2
    assert rollout.prompt_mask.tolist() == [[1, 1, 1]] * 2 + [[0, 0, 1]] * 2
    assert rollout.response_ids.tolist() == [[4, 2, 0], [6, 0, 0], [8, 9, 2], [2, 0, 0]]
    assert rollout.response_mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]]
    assert rollout.log_probs.dtype == torch.float32
    assert torch.allclose(rollout.log_probs, torch.tensor(
        [[-0.5, -0.25, 0], [-1.5, 0, 0], [-0.1, -0.2, -0.3], [-0.05, 0, 0]]))
    assert rollout.pad_token_id == 0


def test_no_outputs_is_an_error_not_an_empty_tensor_crash():
    with pytest.raises(ValueError, match="no samples"):
        rollout_from_outputs([], pad_token_id=0)


def test_seeds_never_repeat_across_prompts_samples_or_neighbouring_steps():
    n, prompts = 4, 64
    streams = [s + j for step in (7, 8) for s in prompt_seeds(step, prompts, n)
               for j in range(n)]  # vLLM gives sample j of a request seed + j
    assert len(set(streams)) == len(streams) == 2 * prompts * n


def test_sampling_arguments_greedy_is_one_argmax_sample():
    greedy = sampling_arguments(0.7, 0.9, 16, samples_per_prompt=4, greedy=True, seed=3)
    assert greedy["temperature"] == 0.0 and greedy["n"] == 1 and "top_p" not in greedy
    sampled = sampling_arguments(0.7, 0.9, 16, samples_per_prompt=4, greedy=False, seed=3)
    assert (sampled["n"], sampled["temperature"], sampled["top_p"]) == (4, 0.7, 0.9)
    assert sampled["logprobs"] == 0 and sampled["max_tokens"] == 16


def test_engine_reads_processed_log_probs_and_serves_bf16_not_fp32():
    args = engine_arguments("m", "float32", False, 0.5)
    # The tokens' probabilities after temperature / top-p, as the HF backend returns.
    assert args["logprobs_mode"] == "processed_logprobs"
    assert args["dtype"] == "auto" and args["gpu_memory_utilization"] == 0.5
    assert engine_arguments("m", "bfloat16", True, 0.5)["dtype"] == "bfloat16"


def test_vllm_without_a_rollout_gpu_is_a_config_error_before_any_actor_starts():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["rollout.backend=vllm"])
    assert error.value.field == "rollout.backend" and "gpus_per_rollout" in str(error.value)


def test_vllm_memory_share_must_fit_a_fractional_gpu():
    shared = ["rollout.backend=vllm", "ppo_resources.gpus_per_rollout=0.5"]
    with pytest.raises(ConfigError) as error:
        load_config(None, shared)
    assert error.value.field == "rollout.vllm_gpu_memory_utilization"
    config = load_config(None, shared + ["rollout.vllm_gpu_memory_utilization=0.45"])
    assert config.rollout.vllm_gpu_memory_utilization == 0.45
    assert load_config(None, ["rollout.backend=vllm", "ppo_resources.gpus_per_rollout=1"]
                       ).rollout.vllm_gpu_memory_utilization == VLLM_GPU_MEMORY_UTILIZATION
