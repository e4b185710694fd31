"""The trainer actor groups of the PPO loop: policy (with its frozen reference) and critic.

Each actor is one DeepSpeed rank and talks to DeepSpeed only through
:class:`~culture_rl.distributed.deepspeed.DeepSpeedStrategy`. The controller splits every batch
into equal parts, one per rank, so all ranks run the same number of forward/backward passes
(the collectives inside ZeRO would otherwise wait forever for a rank with less work).

The reference model costs nothing extra with LoRA: it is the policy with its adapter switched
off (the PPO adapter starts from zero on top of the SFT model). Training all weights keeps a
frozen copy beside the policy, on the same bundle (ZeRO-3-partitioned when training is).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import ray
import torch

from culture_rl.config import DeepSpeedConfig, LoraConfig, PPOConfig
from culture_rl.distributed.deepspeed import DeepSpeedStrategy, free_port
from culture_rl.rl import ppo
from culture_rl.rl.experience import Experience
from culture_rl.rl.modeling import ValueModel, response_log_probs, response_values
from culture_rl.distributed.weight_sync import (sync_weights, close_shared_staging,
                                                close_sync_groups, state_fingerprint,
                                                iter_export_tensors)
from culture_rl.core.errors import ConfigError
from culture_rl.models.calm_policy import (is_calm_export, load_calm_policy, mark_trainable,
                                          save_calm_policy)
from culture_rl.models.loading import load_model, peft_lora_config, load_tokenizer
from culture_rl.rl.preference import reflection_loss


@dataclass(frozen=True)
class TrainerSpec:
    model_path: str
    deepspeed: DeepSpeedConfig
    ppo: PPOConfig
    lora: LoraConfig | None  # None: train all weights
    learning_rate: float
    world_size: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    use_gpu: bool = False
    threads: int = 1
    dtype: str = "float32"
    trust_remote_code: bool = False
    seed: int = 42
    max_response_tokens: int = 0  # rollout.max_new_tokens: the constant of seq_mean_token_sum


def _micro_batches(exp: Experience, size: int) -> list[Experience]:
    return [exp.select(slice(start, start + size)) for start in range(0, len(exp), size)]


class _DeepSpeedTrainer(ABC):
    """What policy and critic ranks share: process group, engine, micro batching, checkpoints."""

    def __init__(self, spec: TrainerSpec, rank: int):
        torch.set_num_threads(max(1, spec.threads))
        self.spec, self.rank = spec, rank
        self.strategy = DeepSpeedStrategy(
            spec.deepspeed, micro_batch_size=spec.micro_batch_size,
            gradient_accumulation_steps=spec.gradient_accumulation_steps,
            world_size=spec.world_size, use_gpu=spec.use_gpu)
        self.engine = None

    def master_address(self) -> tuple[str, int]:
        """Rank 0 hosts the process group's rendezvous."""
        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int, timeout_s: float = 600) -> int:
        self.strategy.setup_distributed(self.rank, master_addr, master_port, timeout_s)
        torch.manual_seed(self.spec.seed + self.rank)
        self.engine = self.strategy.prepare(self._build_model(), self.spec.learning_rate)
        return sum(p.numel() for p in self.engine.module.parameters() if p.requires_grad)

    @abstractmethod
    def _build_model(self):
        """The module this rank trains (the policy, or the critic with its value head)."""

    def _device(self, exp: Experience) -> Experience:
        device = self.engine.device
        if device.type == "cpu":
            return exp
        changes = {name: t.to(device) for name, t in exp._tensors().items()}
        return Experience(**changes, meta=exp.meta, pad_token_id=exp.pad_token_id)

    def _order(self, count: int, epoch: int, step: int) -> torch.Tensor:
        """This rank's sample order for one epoch of a step: seeded, so a resumed run repeats
        it."""
        generator = torch.Generator().manual_seed(self.spec.seed * 1_000_003 + step * 101 + epoch)
        return torch.randperm(count, generator=generator)

    def _shuffled_minibatches(self, exp: Experience, epoch: int, step: int):
        """Per-rank mini batches of micro batches, in a seeded order (same on a resumed run)."""
        shuffled = exp.take(self._order(len(exp), epoch, step))
        per_update = self.spec.micro_batch_size * self.spec.gradient_accumulation_steps
        for start in range(0, len(shuffled), per_update):
            yield _micro_batches(shuffled.select(slice(start, start + per_update)),
                                 self.spec.micro_batch_size)

    def _train(self, exp: Experience, step: int, loss_fn) -> dict[str, float]:
        """``ppo_epochs`` passes over this rank's samples: ``loss_fn(micro)`` gives the loss and
        the scalars to report; DeepSpeed steps the optimizer once per mini batch. The reported
        numbers are means over micro batches and ranks."""
        exp = self._device(exp)
        return self._updates((micro for epoch in range(self.spec.ppo.ppo_epochs)
                              for minibatch in self._shuffled_minibatches(exp, epoch, step)
                              for micro in minibatch), loss_fn)

    def _updates(self, units, loss_fn) -> dict[str, float]:
        """Backward and optimizer step (at DeepSpeed's accumulation boundary) for each unit of
        work: ``loss_fn(unit)`` gives the loss and the scalars to report, which come back as
        means over units and ranks."""
        self.engine.train()
        totals: dict[str, float] = {}
        count = 0
        for unit in units:
            loss, reported = loss_fn(unit)
            self.strategy.backward(self.engine, loss)
            self.strategy.step(self.engine)
            for key, value in reported.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
            count += 1
        return self.strategy.all_reduce_mean({k: v / max(count, 1) for k, v in totals.items()})

    def save(self, folder: str, client_state: dict | None = None) -> None:
        self.strategy.save(self.engine, folder, client_state, frozen_base=self.spec.lora is not None)

    def load(self, folder: str) -> dict:
        return self.strategy.load(self.engine, folder, frozen_base=self.spec.lora is not None)

    def pid(self) -> int:
        return os.getpid()


class _PolicyTrainer(_DeepSpeedTrainer):
    def _build_model(self):
        self.reference = None
        if is_calm_export(self.spec.model_path):
            return self._build_calm_policy()
        model = load_model(self.spec.model_path, self.spec.dtype, self.spec.trust_remote_code)
        if self.spec.lora is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_lora_config(self.spec.lora))
        else:
            reference = load_model(self.spec.model_path, self.spec.dtype,
                                   self.spec.trust_remote_code)
            self.reference = self.strategy.prepare_frozen(reference)
        return model

    def _build_calm_policy(self):
        """A CALM export: its adapter (or base) and CALM modules train further, a frozen copy
        is the reference (switching the adapter off would drop what CALM trained)."""
        if self.spec.deepspeed.zero_stage == 3:
            raise ConfigError("a CALM policy trains with ZeRO 0-2 (its export is written from "
                              "unpartitioned weights)", field="deepspeed.zero_stage")
        policy, _, meta = load_calm_policy(self.spec.model_path)
        mark_trainable(policy, meta)
        self.calm_start = self.spec.model_path
        reference, _, _ = load_calm_policy(self.spec.model_path)
        self.reference = self.strategy.prepare_frozen(reference)
        return policy

    @torch.no_grad()
    def log_probs(self, exp: Experience) -> dict[str, torch.Tensor]:
        """Old (current policy) and reference log-probs of the responses."""
        exp = self._device(exp)
        self.engine.eval()
        old, ref = [], []
        for micro in _micro_batches(exp, self.spec.micro_batch_size):
            old.append(response_log_probs(self.engine, micro)[0])
            if self.reference is None:
                with self.engine.module.disable_adapter():
                    ref.append(response_log_probs(self.engine, micro)[0])
            else:
                ref.append(response_log_probs(self.reference, micro)[0])
        return {"old_log_probs": torch.cat(old).cpu(), "ref_log_probs": torch.cat(ref).cpu()}

    def train_step(self, exp: Experience, step: int) -> dict[str, float]:
        """Clipped-policy-loss updates (minus the entropy bonus) over this rank's samples."""
        cfg = self.spec.ppo

        def loss_fn(micro: Experience):
            log_probs, entropy = response_log_probs(self.engine, micro, with_entropy=True)
            out = ppo.policy_loss(cfg.policy_loss, log_probs=log_probs,
                                  old_log_probs=micro.old_log_probs, advantages=micro.advantages,
                                  mask=micro.response_mask, clip_eps=cfg.clip_range,
                                  clip_low=cfg.clip_ratio_low, clip_high=cfg.clip_ratio_high,
                                  aggregation=cfg.loss_aggregation,
                                  max_length=self.spec.max_response_tokens)
            mean_entropy = ppo.masked_mean(entropy, micro.response_mask)
            return out["loss"] - cfg.entropy_coef * mean_entropy, {
                "policy_loss": out["loss"], "entropy": mean_entropy,
                "clip_fraction": out["clip_fraction"], "approx_kl": out["approx_kl"]}

        return self._train(exp, step, loss_fn)

    def train_pairs(self, chosen: Experience, rejected: Experience, step: int, *, epochs: int,
                    sft_coef: float, preference_coef: float, beta: float) -> dict[str, float]:
        """The reflection loop's update over this rank's pairs (row i of ``chosen`` is the
        revision preferred over row i of ``rejected``, same prompt): SFT on the revision plus
        DPO against the reference log-probs the controller put in ``ref_log_probs``. One
        optimizer step per micro batch of pairs (the spec's accumulation is 1), so the row
        count must be a multiple of the micro batch size, the same on every rank."""
        chosen, rejected = self._device(chosen), self._device(rejected)
        size = self.spec.micro_batch_size

        def loss_fn(rows: torch.Tensor):
            good, bad = chosen.take(rows), rejected.take(rows)
            out = reflection_loss(response_log_probs(self.engine, good)[0], good.response_mask,
                                  response_log_probs(self.engine, bad)[0], bad.response_mask,
                                  good.ref_log_probs, bad.ref_log_probs, sft_coef=sft_coef,
                                  preference_coef=preference_coef, beta=beta)
            return out.pop("loss"), out

        def micro_batches():
            for epoch in range(epochs):
                order = self._order(len(chosen), epoch, step)
                for start in range(0, len(order), size):
                    yield order[start:start + size]

        return self._updates(micro_batches(), loss_fn)

    def sync_weights(self, receivers: list, bucket_mb: float, timeout_s: float = 600,
                     share_pages: bool = False, transport: str = "auto") -> dict:
        """Send the current (LoRA-merged) weights to the rollout workers (``transport``: see
        ``rollout.sync_transport``). Under ZeRO-3 every rank joins the gathers; rank 0 sends
        (and alone builds the collective group)."""
        return sync_weights(self.engine.module, receivers if self.strategy.is_rank_0 else [],
                            bucket_mb, gather_zero3=self.spec.deepspeed.zero_stage == 3,
                            timeout_s=timeout_s, share_pages=share_pages, transport=transport)

    def close(self) -> None:
        """Free what outlives a killed process: the weight-sync files in /dev/shm, and the
        collective weight-sync groups (their receivers leave them too)."""
        close_shared_staging()
        close_sync_groups()

    def fingerprint(self) -> dict[str, float]:
        """Per-tensor sums of the weights the generators should hold (LoRA merged)."""
        return state_fingerprint(self.engine.module,
                                 gather_zero3=self.spec.deepspeed.zero_stage == 3)

    def export(self, folder: str) -> None:
        """A plain Hugging Face model with the adapter merged (rank 0 writes ``folder``)."""
        if getattr(self, "calm_start", None) is not None:  # a CALM export again
            if self.strategy.is_rank_0:
                save_calm_policy(self.engine.module, self.calm_start, folder)
            return
        zero3 = self.spec.deepspeed.zero_stage == 3
        model = None
        if self.strategy.is_rank_0:
            if zero3:
                from transformers.integrations.deepspeed import unset_hf_deepspeed_config

                unset_hf_deepspeed_config()  # a plain load on one rank, not a partitioned one
            model = load_model(self.spec.model_path, self.spec.dtype,
                               self.spec.trust_remote_code)
            if hasattr(model, "merge_and_unload"):
                model = model.merge_and_unload()
        # Every rank joins the ZeRO-3 gathers; rank 0 copies each weight while it is gathered
        # (the yielded tensors are only valid until the next one is asked for).
        targets = dict(model.named_parameters()) if model is not None else {}
        with torch.no_grad():
            for name, tensor in iter_export_tensors(self.engine.module, gather_zero3=zero3):
                if model is not None:
                    targets[name].copy_(tensor)
        if model is None:
            return
        model.save_pretrained(folder)
        load_tokenizer(self.spec.model_path, self.spec.trust_remote_code).save_pretrained(folder)


class _CriticTrainer(_DeepSpeedTrainer):
    def _build_model(self):
        lm = load_model(self.spec.model_path, self.spec.dtype, self.spec.trust_remote_code)
        if hasattr(lm, "merge_and_unload"):
            lm = lm.merge_and_unload()
        critic = ValueModel(lm)
        if self.spec.lora is not None:
            from peft import LoraConfig as PeftLoraConfig, get_peft_model

            lora = self.spec.lora
            targets = lora.target_modules
            critic.backbone = get_peft_model(critic.backbone, PeftLoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                target_modules="all-linear" if targets == ["all-linear"] else list(targets)))
        return critic

    @torch.no_grad()
    def values(self, exp: Experience) -> torch.Tensor:
        exp = self._device(exp)
        self.engine.eval()
        return torch.cat([response_values(self.engine, micro)
                          for micro in _micro_batches(exp, self.spec.micro_batch_size)]).cpu()

    def train_step(self, exp: Experience, step: int) -> dict[str, float]:
        """Clipped value-loss updates towards the returns over this rank's samples."""
        def loss_fn(micro: Experience):
            out = ppo.clipped_value_loss(response_values(self.engine, micro), micro.values,
                                         micro.returns, micro.response_mask,
                                         self.spec.ppo.value_clip_range)
            return out["loss"], {"value_loss": out["loss"],
                                 "value_clip_fraction": out["clip_fraction"]}

        return self._train(exp, step, loss_fn)


PolicyTrainer = ray.remote(_PolicyTrainer)
CriticTrainer = ray.remote(_CriticTrainer)

