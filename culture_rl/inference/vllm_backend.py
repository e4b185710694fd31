"""The vLLM rollout backend (``rollout.backend: vllm``), written against vLLM's V1 engine
(checked against the source of vLLM 0.33, the release on PyPI on 2026-12-01).

vLLM is imported only here, and only when this backend starts: nothing else needs it, and it
is not a dependency (it pulls a CUDA build of torch).

How it fits a ``RolloutWorker`` actor (one GPU, tensor-parallel size 1):

- The engine runs **in the actor's own process** (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
  ``LLM.apply_model`` then calls our function on the live model, so a weight-sync bucket that
  already reached this actor (shared memory, object store or an NCCL broadcast into its GPU
  buffer) goes into the model by reference: no second hop through an engine-core process, and
  no worker extension class to install on the rollout nodes. With vLLM's default (the engine in
  a child process) every bucket would be pickled again to cross into it.
- New weights go through the model's own ``load_weights``, which knows the Hugging Face names
  and fuses them into vLLM's layout (q/k/v into ``qkv_proj``, gate/up into ``gate_up_proj``).
  The prefix cache is then reset: its KV blocks were computed with the old weights.
- Log-probs are read in ``processed_logprobs`` mode (after temperature and top-p), the
  probabilities the tokens were drawn with, as the HF backend returns. vLLM's default
  (``raw_logprobs``) would give the untempered model's, and PPO's ``logprob_gap`` metric would
  show the difference as drift.

The pure parts (engine arguments, per-prompt seeds, sampling arguments, output conversion) are
unit-tested on CPU in ``tests/unit/test_vllm_backend.py``; the engine itself needs vLLM and a
GPU, and has not run in this project's CI (see docs/benchmarks.md, GPU section).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch

from culture_rl.core.errors import ConfigError
from culture_rl.config.ppo import VLLM_GPU_MEMORY_UTILIZATION
from culture_rl.distributed.weight_sync import unpack_bucket
from culture_rl.inference.sequences import Rollout
from culture_rl.models.chat import chat_prompts

# Far apart per step so that step s's prompt seeds never meet step s+1's.
_SEED_STRIDE = 1_000_003


def engine_arguments(model_path: str, dtype: str, trust_remote_code: bool,
                     gpu_memory_utilization: float) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for one rollout worker."""
    return {
        "model": model_path,
        # float32 is our CPU default; on a GPU, serve the checkpoint's own dtype (bf16 for the
        # paper-scale models) rather than fp32, which vLLM's kernels mostly lack.
        "dtype": "auto" if dtype == "float32" else dtype,
        "trust_remote_code": trust_remote_code,
        "enable_prefix_caching": True,  # n samples per prompt share the prompt's KV blocks
        "logprobs_mode": "processed_logprobs",
        "gpu_memory_utilization": gpu_memory_utilization,
        "tensor_parallel_size": 1,
    }


def prompt_seeds(seed: int, num_prompts: int, samples_per_prompt: int) -> list[int]:
    """A seed per prompt. vLLM gives a prompt's n samples ``seed + j``; one seed for every
    prompt would make prompt i's sample j use the same random stream as prompt k's."""
    return [seed * _SEED_STRIDE + i * samples_per_prompt for i in range(num_prompts)]


def sampling_arguments(temperature: float, top_p: float, max_new_tokens: int,
                       samples_per_prompt: int, greedy: bool, seed: int) -> dict[str, Any]:
    """Keyword arguments of one prompt's ``vllm.SamplingParams``."""
    if greedy:  # evaluation: argmax, one sample (vLLM reads temperature 0 as greedy)
        return {"n": 1, "temperature": 0.0, "max_tokens": max_new_tokens, "logprobs": 0,
                "seed": seed}
    return {"n": samples_per_prompt, "temperature": temperature, "top_p": top_p,
            "max_tokens": max_new_tokens, "logprobs": 0, "seed": seed}


def sampled_log_probs(token_ids: Sequence[int], logprobs) -> list[float]:
    """The log-prob of each sampled token. ``logprobs`` is vLLM's per-position
    ``{token_id: Logprob}`` (a list, or a ``FlatLogprobs`` that indexes the same way); with
    ``logprobs=0`` it holds the sampled token, looked up by id rather than by dict order."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no log-probs: the sampling parameters must ask for "
                           "them (logprobs=0)")
    values = []
    for position, token in enumerate(token_ids):
        entry = logprobs[position]
        if token not in entry:
            raise RuntimeError(f"vLLM's log-probs at position {position} lack the sampled "
                               f"token {token}")
        values.append(float(entry[token].logprob))
    return values


def rollout_from_outputs(outputs, pad_token_id: int):
    """A :class:`~culture_rl.inference.rollout.Rollout` from vLLM's ``RequestOutput`` list, in the
    HF backend's layout: prompts left-padded, responses right-padded, the mask covering each
    response up to and including its EOS (vLLM keeps the EOS in ``token_ids``)."""
    prompt_rows, response_rows, logprob_rows, texts = [], [], [], []
    for request in outputs:
        for sample in request.outputs:
            prompt_rows.append(list(request.prompt_token_ids))
            response_rows.append(list(sample.token_ids))
            logprob_rows.append(sampled_log_probs(sample.token_ids, sample.logprobs))
            texts.append(sample.text)
    if not prompt_rows:
        raise ValueError("vLLM returned no samples (no prompts were given)")
    p_width = max(len(r) for r in prompt_rows)
    t_width = max(max(len(r) for r in response_rows), 1)

    def left(rows, fill):
        return torch.tensor([[fill] * (p_width - len(r)) + r for r in rows])

    def right(rows, fill):
        return torch.tensor([r + [fill] * (t_width - len(r)) for r in rows])

    return Rollout(prompt_ids=left(prompt_rows, pad_token_id),
                   prompt_mask=left([[1] * len(r) for r in prompt_rows], 0),
                   response_ids=right(response_rows, pad_token_id),
                   response_mask=right([[1] * len(r) for r in response_rows], 0),
                   log_probs=right(logprob_rows, 0.0).float(), texts=texts,
                   pad_token_id=pad_token_id)


class VLLMBackend:
    """vLLM where it is installed and the worker has a GPU (see the module docstring)."""

    def __init__(self, model_path: str, dtype: str = "float32", trust_remote_code: bool = False,
                 gpu_memory_utilization: float = VLLM_GPU_MEMORY_UTILIZATION):
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ConfigError("rollout.backend is 'vllm' but vLLM is not installed on the "
                              "rollout nodes (pip install vllm), or use 'hf'",
                              field="rollout.backend") from None
        if not torch.cuda.is_available():
            raise ConfigError("rollout.backend 'vllm' needs a GPU per rollout worker (set "
                              "ppo_resources.gpus_per_rollout)", field="rollout.backend")
        # Read when the engine is built: keep the engine core in this process (see above).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.engine = LLM(**engine_arguments(model_path, dtype, trust_remote_code,
                                             gpu_memory_utilization))
        self.tokenizer = self.engine.get_tokenizer()
        # In-process, apply_model hands back the live module: weight sync's device and
        # checksum read it (vLLM's parameter names, e.g. qkv_proj, not the HF ones).
        self.model = self.engine.apply_model(lambda model: model)[0]

    def load_weights(self, bucket) -> int:
        """Load one weight-sync bucket (HF names) through vLLM's loader."""
        device = next(self.model.parameters()).device
        tensors = [(name, t.to(device)) for name, t in unpack_bucket(bucket)]
        self.engine.apply_model(lambda model: model.load_weights(weights=tensors))
        self.engine.reset_prefix_cache()
        return len(tensors)

    def generate(self, prompts: Sequence[str], params, seed: int,
                 progress: Callable[[int], None] | None = None):
        from vllm import SamplingParams as VLLMParams

        if progress is not None:  # vLLM schedules the whole list at once
            progress(len(prompts))
        sampling = [VLLMParams(**sampling_arguments(
            params.temperature, params.top_p, params.max_new_tokens, params.samples_per_prompt,
            params.greedy, prompt_seed))
            for prompt_seed in prompt_seeds(seed, len(prompts), params.samples_per_prompt)]

        # A chat model reads its template, as the HF backend's prompts do; vLLM stops at the
        # model's generation-config EOS ids (its end-of-turn) by itself.
        outputs = self.engine.generate(chat_prompts(self.tokenizer, prompts), sampling,
                                       use_tqdm=False)
        pad = self.tokenizer.pad_token_id
        return rollout_from_outputs(outputs, 0 if pad is None else pad)
