"""Weight sync on the session's real Ray: LoRA-trained weights reach every generator actor,
bucketed sync needs far fewer RPCs than per-tensor, receiver failures surface, the collective
transport broadcasts over a real gloo group; and, in a subprocess, ZeRO-3 shards are gathered
into the full weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import ray
import torch

from culture_rl.distributed.weight_sync import collective as collective_sync
from culture_rl.distributed.weight_sync import close_sync_groups
from culture_rl.distributed.weight_sync import WeightReceiver, WeightSyncError, \
    state_fingerprint, sync_weights

pytestmark = pytest.mark.integration

# This module is not importable from Ray's worker processes: ship its classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def tiny_llama(seed: int = 0, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(hidden_size=hidden, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=100,
                                        tie_word_embeddings=True))


def lora_trained(seed: int = 0):
    """The trainer's policy after some LoRA steps: same base as the generators, lora_B != 0."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(seed), LoraConfig(r=4, lora_alpha=8,
                                                        target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    return model


@ray.remote(num_cpus=0)
class TinyGenerator(WeightReceiver):
    """A stand-in rollout actor: holds a plain model built like the trainer's base."""

    def __init__(self, seed: int = 0, hidden: int = 32):
        torch.set_num_threads(1)
        self.model = tiny_llama(seed, hidden)
        self.delay_s = 0.0

    def receive_bucket(self, bucket) -> int:
        time.sleep(self.delay_s)
        return super().receive_bucket(bucket)

    def set_delay(self, seconds: float) -> None:
        self.delay_s = seconds

    def fingerprint(self) -> dict[str, float]:
        return state_fingerprint(self.model)

    def sync_groups(self) -> list[str]:
        return list(self.__dict__.get("_culture_rl_sync_groups", {}))


ZERO3_SCRIPT = textwrap.dedent("""
    import torch, deepspeed
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from culture_rl.distributed.weight_sync import iter_export_tensors

    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, tie_word_embeddings=True)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    want = {name: t.clone() for name, t in iter_export_tensors(model)}
    deepspeed.init_distributed(dist_backend="gloo")
    engine, *_ = deepspeed.initialize(model=model, config={
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}})
    assert all(p.numel() == 0 for p in engine.module.parameters()), "not partitioned"
    try:
        next(iter_export_tensors(engine))
        raise SystemExit("a partitioned model exported without gather_zero3")
    except ValueError:
        pass
    # clone inside the loop: a gathered tensor is freed when the generator moves on
    got = {name: t.clone() for name, t in iter_export_tensors(engine, gather_zero3=True)}
    assert list(got) == list(want), (list(got), list(want))
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0, msg=name)
    assert all(p.numel() == 0 for p in engine.module.parameters()), "not re-partitioned"
    print("ZERO3-OK", len(got))
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def zero3_process():
    """Start the ZeRO-3 check at once (a fresh process: this one's torch.distributed stays
    untouched), so its ~10 s of imports overlap the Ray tests; the last test collects it."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
               LOCAL_RANK="0", WORLD_SIZE="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-c", ZERO3_SCRIPT], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def generators(ray_session):
    actors = [TinyGenerator.remote(seed=0) for _ in range(2)]
    yield actors
    for actor in actors:
        ray.kill(actor)


def test_lora_trained_weights_reach_every_generator(generators):
    trainer = lora_trained(seed=0)
    before = ray.get([g.fingerprint.remote() for g in generators])
    # The generators start from the trainer's base: only the LoRA delta can change them, so a
    # sync that sent the unmerged base would leave them stale.
    assert before[0] == before[1] == state_fingerprint(tiny_llama(0))
    merged = state_fingerprint(trainer)
    stats = sync_weights(trainer, generators, bucket_mb=1)
    after = ray.get([g.fingerprint.remote() for g in generators])
    for fingerprint, old in zip(after, before):
        assert fingerprint == merged
        changed = [name for name in merged if fingerprint[name] != old[name]]
        assert changed and all(".q_proj." in n or ".v_proj." in n for n in changed)
    assert stats["tensors"] == len(merged) and stats["buckets"] >= 1
    assert stats["rpcs"] == 2 * stats["buckets"] and stats["bytes"] > 0


def test_bucketed_sync_uses_fewer_rpcs_than_per_tensor(generators):
    trainer = lora_trained(seed=3)
    bucketed = sync_weights(trainer, generators, bucket_mb=0.05)
    per_tensor = sync_weights(trainer, generators, bucket_mb=0.05, mode="per_tensor")
    assert per_tensor["buckets"] == per_tensor["tensors"] == bucketed["tensors"]
    assert 1 < bucketed["buckets"] < per_tensor["buckets"] // 4  # 50 KB buckets
    assert bucketed["rpcs"] < per_tensor["rpcs"] and bucketed["bytes"] == per_tensor["bytes"]
    expected = state_fingerprint(trainer)
    assert all(f == expected for f in ray.get([g.fingerprint.remote() for g in generators]))


def test_a_mismatched_generator_fails_the_sync_by_name(generators):
    with pytest.raises(ValueError, match="model.embed_tokens.weight.*shape"):
        sync_weights(tiny_llama(0, hidden=16), generators[:1], bucket_mb=1)


def test_a_slow_generator_times_out_naming_the_outstanding_buckets(generators):
    ray.get(generators[1].set_delay.remote(0.5))
    try:
        with pytest.raises(WeightSyncError, match=r"timed out after 0.2 s: \d+ of \d+ buckets"):
            sync_weights(tiny_llama(0), generators, bucket_mb=0.05, timeout_s=0.2)
    finally:
        ray.get(generators[1].set_delay.remote(0.0))


def test_zero3_shards_are_gathered_into_the_merged_weights(zero3_process):
    output, _ = zero3_process.communicate(timeout=120)
    assert zero3_process.returncode == 0 and "ZERO3-OK" in output, output[-3000:]


def test_same_node_generators_read_shared_memory_and_both_transports_agree(generators):
    trainer = lora_trained(seed=5)
    expected = state_fingerprint(trainer)
    auto = sync_weights(trainer, generators, bucket_mb=0.05)
    assert auto["transport"] == "shared_memory"  # every generator is on this node
    assert all(f == expected for f in ray.get([g.fingerprint.remote() for g in generators]))
    other = lora_trained(seed=6)
    store = sync_weights(other, generators, bucket_mb=0.05, transport="object_store")
    assert store["transport"] == "object_store" and store["tensors"] == auto["tensors"]
    assert all(f == state_fingerprint(other)
               for f in ray.get([g.fingerprint.remote() for g in generators]))


def fingerprints(generators) -> list[dict[str, float]]:
    return ray.get([g.fingerprint.remote() for g in generators])


def test_collective_broadcast_lands_the_merged_weights_and_reuses_its_group(generators):
    trainer = lora_trained(seed=7)
    key = tuple(g._actor_id.hex() for g in generators)
    try:
        first = sync_weights(trainer, generators, bucket_mb=0.02, transport="collective")
        assert first["transport"] == "collective" and first["buckets"] > 1
        assert first["rpcs"] == 2 * first["buckets"] and first["bytes"] > 0
        merged = state_fingerprint(trainer)
        assert first["tensors"] == len(merged)
        assert all(f == merged for f in fingerprints(generators))
        group = collective_sync._GROUPS[key]
        # The trainer keeps training: the next sync must carry the new LoRA delta.
        with torch.no_grad():
            for name, param in trainer.named_parameters():
                if "lora_B" in name:
                    param.add_(0.5)
        changed = state_fingerprint(trainer)
        assert changed != merged
        second = sync_weights(trainer, generators, bucket_mb=0.02, transport="collective")
        assert collective_sync._GROUPS[key] is group  # built once, reused
        assert second["buckets"] == first["buckets"]
        assert all(f == changed for f in fingerprints(generators))
        assert all(len(ids) == 1 for ids in ray.get([g.sync_groups.remote() for g in generators]))
    finally:
        close_sync_groups()
    assert not collective_sync._GROUPS
    assert ray.get([g.sync_groups.remote() for g in generators]) == [[], []]


def test_a_stalled_collective_sync_is_a_weight_sync_error_and_the_next_one_rebuilds(
        generators):
    ray.get(generators[1].set_delay.remote(2.5))  # applies bucket 0, then stalls
    try:
        with pytest.raises(WeightSyncError, match=r"timed out after 1.5 s"):
            sync_weights(tiny_llama(0), generators, bucket_mb=0.01, transport="collective",
                         timeout_s=1.5)
        assert not collective_sync._GROUPS  # the broken group is gone on the trainer's side
    finally:
        ray.get(generators[1].set_delay.remote(0.0))
    try:
        trainer = lora_trained(seed=8)
        stats = sync_weights(trainer, generators, bucket_mb=0.01, transport="collective",
                             timeout_s=30)
        assert stats["transport"] == "collective"
        assert all(f == state_fingerprint(trainer) for f in fingerprints(generators))
        # The receivers dropped the broken group: only the new one is left.
        assert all(len(ids) == 1 for ids in ray.get([g.sync_groups.remote() for g in generators]))
    finally:
        close_sync_groups()


def test_nccl_for_cpu_weights_fails_before_any_group_is_built(generators):
    with pytest.raises(WeightSyncError, match="on a GPU"):
        sync_weights(tiny_llama(0), generators, bucket_mb=1, transport="collective",
                     collective_backend="nccl")
    assert not collective_sync._GROUPS
