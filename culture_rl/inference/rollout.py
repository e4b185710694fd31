"""Rollout generators: Ray actors that sample responses and their log-probs.

A ``RolloutWorker`` holds one generation backend. The Hugging Face backend generates batched
(left-padded prompts, KV cache) with temperature / top-p / max tokens and n samples per prompt,
and returns token ids plus the sampling log-probs; the vLLM backend (:mod:`.vllm_backend`) is
used where vLLM and a GPU are present (imported only when chosen: nothing here needs it). The
same actor serves evaluation, CultureSPA's generation and the reflection loop.
Workers receive new weights from the policy trainer through
:class:`~culture_rl.distributed.weight_sync.WeightReceiver`.
"""

from __future__ import annotations

import os
from typing import Callable, Protocol, Sequence

import ray
import torch

from culture_rl.distributed.weight_sync import WeightReceiver, state_fingerprint
from culture_rl.core.errors import ConfigError
from culture_rl.models.chat import chat_prompts, stop_token_ids, apply_choice
from culture_rl.config.ppo import VLLM_GPU_MEMORY_UTILIZATION
from culture_rl.distributed.metrics import RayGauges
from culture_rl.inference.generation import generate_answers, option_distributions, mean_token_nll
from culture_rl.inference.sequences import Rollout, SamplingParams, response_mask
from culture_rl.inference.vllm_backend import VLLMBackend
from culture_rl.models.adapters import is_adapter_set, load_adapter_set, read_adapter_set, routed
from culture_rl.models.calm_policy import is_calm_export, load_calm_policy
from culture_rl.models.loading import load_model, load_tokenizer


def _pad_columns(tensor: torch.Tensor, width: int, fill) -> torch.Tensor:
    if tensor.shape[1] >= width:
        return tensor
    pad = torch.full((tensor.shape[0], width - tensor.shape[1]), fill, dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=1)


def _decoding(params: SamplingParams) -> dict:
    if params.greedy:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p,
            "top_k": 0}


class GenerationBackend(Protocol):
    model: torch.nn.Module  # what weight sync writes into

    def generate(self, prompts: Sequence[str], params: SamplingParams, seed: int,
                 progress: Callable[[int], None] | None = None) -> Rollout:
        """``progress(n)`` is told how many prompts are still waiting, as batches finish."""


class HFBackend:
    """``transformers`` generate: batched, KV cache, sampling log-probs from the processed
    scores (so they are the probabilities the tokens were actually drawn with). A chat model
    reads each prompt through its chat template and stops at its end-of-turn; the rollout's
    prompt ids are the templated ones, so the trainer scores exactly what was sampled."""

    def __init__(self, model_path: str, dtype: str = "float32", trust_remote_code: bool = False,
                 chat_template: str = "auto"):

        if is_calm_export(model_path):  # CALM: the LM with its identity state injected
            self.model, self.tokenizer, _ = load_calm_policy(model_path)
            apply_choice(self.tokenizer, chat_template)
        elif is_adapter_set(model_path):  # per-culture adapters, kept apart and routed
            base = read_adapter_set(model_path)["base_model"]
            self.tokenizer = load_tokenizer(base, trust_remote_code, chat_template)
            self.model = load_adapter_set(model_path, dtype, trust_remote_code)
        else:
            self.tokenizer = load_tokenizer(model_path, trust_remote_code, chat_template)
            self.model = load_model(model_path, dtype, trust_remote_code)
            if hasattr(self.model, "merge_and_unload"):  # an adapter: serve merged weights
                self.model = self.model.merge_and_unload()
        self.tokenizer.padding_side = "left"
        self.model.eval().requires_grad_(False)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], params: SamplingParams, seed: int,
                 progress: Callable[[int], None] | None = None) -> Rollout:
        torch.manual_seed(seed)
        tok = self.tokenizer
        stops = stop_token_ids(tok, self.model)
        parts = []
        for start in range(0, len(prompts), params.batch_size):
            if progress is not None:
                progress(len(prompts) - start)
            batch = chat_prompts(tok, prompts[start:start + params.batch_size])
            encoded = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            encoded = encoded.to(self.device)
            output = self.model.generate(
                **encoded, **_decoding(params), max_new_tokens=params.max_new_tokens,
                num_return_sequences=params.samples_per_prompt, output_scores=True,
                return_dict_in_generate=True, pad_token_id=tok.pad_token_id,
                eos_token_id=stops)
            prompt_width = encoded["input_ids"].shape[1]
            responses = output.sequences[:, prompt_width:].cpu()
            scores = torch.stack(output.scores, dim=1).float().cpu()  # [N, T, V]
            log_probs = torch.log_softmax(scores, dim=-1).gather(
                -1, responses.unsqueeze(-1)).squeeze(-1)
            mask = response_mask(responses, stops)
            log_probs = torch.where(mask.bool(), log_probs, torch.zeros_like(log_probs))
            n = params.samples_per_prompt
            parts.append((encoded["input_ids"].cpu().repeat_interleave(n, 0),
                          encoded["attention_mask"].cpu().repeat_interleave(n, 0),
                          responses, mask, log_probs))
        prompt_width = max(p[0].shape[1] for p in parts)
        response_width = max(p[2].shape[1] for p in parts)
        pad = tok.pad_token_id

        def left(t, fill):
            missing = prompt_width - t.shape[1]
            return t if not missing else torch.cat(
                [torch.full((t.shape[0], missing), fill, dtype=t.dtype), t], 1)

        response_ids = torch.cat([_pad_columns(p[2], response_width, pad) for p in parts])
        mask = torch.cat([_pad_columns(p[3], response_width, 0) for p in parts])
        texts = tok.batch_decode(torch.where(mask.bool(), response_ids, pad),
                                 skip_special_tokens=True)
        return Rollout(prompt_ids=torch.cat([left(p[0], pad) for p in parts]),
                       prompt_mask=torch.cat([left(p[1], 0) for p in parts]),
                       response_ids=response_ids, response_mask=mask,
                       log_probs=torch.cat([_pad_columns(p[4], response_width, 0.0)
                                            for p in parts]),
                       texts=texts, pad_token_id=pad)


def _vllm_backend(model_path: str, dtype: str, trust_remote_code: bool,
                  gpu_memory_utilization: float, chat_template: str):
    backend = VLLMBackend(model_path, dtype, trust_remote_code, gpu_memory_utilization)
    apply_choice(backend.tokenizer, chat_template)
    return backend


def _hf_backend(model_path: str, dtype: str, trust_remote_code: bool,
                gpu_memory_utilization: float, chat_template: str):
    # takes what the device leaves
    return HFBackend(model_path, dtype, trust_remote_code, chat_template)


BACKENDS = {"hf": _hf_backend, "vllm": _vllm_backend}


@ray.remote
class RolloutWorker(WeightReceiver):
    """One generator of the rollout group."""

    def __init__(self, model_path: str, backend: str = "hf", dtype: str = "float32",
                 trust_remote_code: bool = False, threads: int = 1,
                 gpu_memory_utilization: float = VLLM_GPU_MEMORY_UTILIZATION,
                 chat_template: str = "auto"):
        torch.set_num_threads(max(1, threads))
        self.gauges = RayGauges(workflow="rollout", worker=str(os.getpid()))
        self.backend_name, self.dtype, self.trust_remote_code = backend, dtype, trust_remote_code
        self.gpu_memory_utilization = gpu_memory_utilization  # vLLM's share of the GPU
        self.chat_template = chat_template  # model.chat_template, for every model it loads
        self.load(model_path)

    def load(self, model_path: str) -> None:
        """Serve another model (the evaluation harness walks its models with one group)."""
        self.backend = None  # free the old weights before the new ones load
        self.backend = BACKENDS[self.backend_name](model_path, self.dtype,
                                                   self.trust_remote_code,
                                                   self.gpu_memory_utilization,
                                                   self.chat_template)
        self.model = self.backend.model

    def _hf(self, what: str) -> "HFBackend":
        if not isinstance(self.backend, HFBackend):
            raise ConfigError(f"{what} reads the model's own forward pass: evaluation actors "
                              "use the 'hf' backend", field="rollout.backend")
        return self.backend

    def _routed(self, backend, routes, run):
        """``run(indices)`` over all requests, or per culture's adapter when routed."""
        if routes is None:
            return run(None)

        return routed(backend.model, routes, run)

    def complete(self, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
                 routes: Sequence[str | None] | None = None, sample: bool = False,
                 temperature: float = 1.0, seed: int = 0) -> list[str]:
        """Completions, text only: greedy (evaluation) or sampled (data generation). With an
        adapter set, ``routes`` names each prompt's culture (its adapter serves it)."""
        backend = self._hf("completion")
        torch.manual_seed(seed)

        def run(indices):
            chosen = prompts if indices is None else [prompts[i] for i in indices]
            return generate_answers(backend.model, backend.tokenizer, chosen,
                                    max_new_tokens=max_new_tokens, batch_size=batch_size,
                                    sample=sample, temperature=temperature)
        return self._routed(backend, routes, run)

    def option_distributions(self, prompts: Sequence[str], labels: Sequence[Sequence[str]],
                             batch_size: int, routes: Sequence[str | None] | None = None
                             ) -> list[list[float]]:
        """Per prompt, the distribution over its option labels (survey / value answers)."""
        backend = self._hf("option scoring")

        def run(indices):
            chosen = range(len(prompts)) if indices is None else indices
            return option_distributions(backend.model, backend.tokenizer,
                                        [prompts[i] for i in chosen],
                                        [labels[i] for i in chosen], batch_size=batch_size)
        return self._routed(backend, routes, run)

    def generate(self, prompts: Sequence[str], params: SamplingParams, seed: int) -> Rollout:
        # Prompts this generator has yet to finish: the dashboard's view of rollout backlog.
        depth = lambda waiting: self.gauges.set({"rollout_queue_depth": waiting})  # noqa: E731
        try:
            return self.backend.generate(prompts, params, seed, progress=depth)
        finally:
            depth(0)

    def receive_bucket(self, bucket) -> int:
        load_weights = getattr(self.backend, "load_weights", None)  # engines with a loader
        return load_weights(bucket) if load_weights else super().receive_bucket(bucket)

    def lm_losses(self, texts: Sequence[str], batch_size: int,
                  routes: Sequence[str | None] | None = None) -> list[float]:
        """Per text, the mean token NLL (a guard on general language ability)."""
        backend = self._hf("language-modelling loss")

        def run(indices):
            chosen = texts if indices is None else [texts[i] for i in indices]
            return mean_token_nll(backend.model, backend.tokenizer, chosen,
                                  batch_size=batch_size)
        return self._routed(backend, routes, run)

    def fingerprint(self) -> dict[str, float]:
        return state_fingerprint(self.model)

    def pid(self) -> int:
        return os.getpid()
