"""Weight-sync packing, LoRA merging and applying, without Ray."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from culture_rl.distributed.weight_sync.collective import _BroadcastStaging, \
    default_collective_backend, pack_broadcast_buckets
from culture_rl.distributed.weight_sync.groups import shared_gpus
from culture_rl.distributed.weight_sync import BroadcastBucket, Bucket, apply_bucket, \
    iter_export_tensors, make_buckets, state_fingerprint, sync_weights, unpack_bucket


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def lora_wrapped(model, use_dora: bool = False):
    """A peft LoRA (or DoRA) copy of ``model`` whose adapters are "trained" (lora_B non-zero,
    DoRA magnitudes moved)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           use_dora=use_dora))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.1 * torch.randn(param.shape, generator=generator))
    return peft_model


def unpack(bucket: Bucket) -> dict[str, torch.Tensor]:
    flat = torch.from_numpy(bucket.flat)
    if bucket.dtype == "bfloat16":
        flat = flat.view(torch.bfloat16)
    out, offset = {}, 0
    for name, shape in zip(bucket.names, bucket.shapes):
        n = int(np.prod(shape))
        out[name] = flat[offset:offset + n].view(shape)
        offset += n
    assert offset == flat.numel()
    return out


def test_buckets_respect_size_and_dtype_and_round_trip():
    tensors = [("a", torch.randn(10)), ("b", torch.randn(3, 4)), ("c", torch.randn(5)),
               ("d", torch.arange(6, dtype=torch.int64)), ("e", torch.randn(2, 2).t()),
               ("big", torch.randn(100))]
    buckets = list(make_buckets(tensors, bucket_bytes=100))
    # a+b = 88 B fit; c would overflow; d changes dtype; e (transposed view) gets packed too;
    # big (400 B) exceeds the bucket size and travels alone.
    assert [b.names for b in buckets] == [["a", "b"], ["c"], ["d"], ["e"], ["big"]]
    assert [b.dtype for b in buckets] == ["float32", "float32", "int64", "float32", "float32"]
    assert all(b.flat.ndim == 1 and b.flat.flags.c_contiguous for b in buckets)
    assert all(b.nbytes <= 100 for b in buckets if b.names != ["big"])
    unpacked = {name: t for b in buckets for name, t in unpack(b).items()}
    for name, tensor in tensors:
        assert torch.equal(unpacked[name], tensor)
    # buckets are independent copies: changing a source afterwards does not reach them
    tensors[0][1].add_(1)
    assert not torch.equal(unpack(buckets[0])["a"], tensors[0][1])


def test_bucket_size_zero_is_one_tensor_per_bucket():
    tensors = [(str(i), torch.randn(i + 1)) for i in range(4)]
    assert [b.names for b in make_buckets(tensors, 0)] == [["0"], ["1"], ["2"], ["3"]]


def test_bf16_travels_as_int16_bits():
    weight = torch.randn(7, 3).to(torch.bfloat16)
    (bucket,) = make_buckets([("w", weight)], 1 << 20)
    assert bucket.dtype == "bfloat16" and bucket.flat.dtype == np.int16
    assert torch.equal(unpack(bucket)["w"], weight)
    model = torch.nn.Linear(3, 7, bias=False).to(torch.bfloat16)
    assert apply_bucket(model, Bucket(["weight"], bucket.shapes, bucket.dtype, bucket.flat)) == 1
    assert torch.equal(model.weight, weight)


def test_transient_buckets_reuse_one_buffer_and_skip_copies_of_big_tensors():
    big = torch.arange(8.0)
    tensors = [("a", torch.ones(2)), ("b", torch.full((2,), 2.0)), ("big", big),
               ("c", torch.full((3,), 3.0)), ("d", torch.full((3,), 4.0))]
    seen, addresses = [], set()
    for bucket in make_buckets(tensors, 16, transient=True):
        seen.append({name: t.clone() for name, t in unpack(bucket).items()})
        if bucket.names == ["big"]:  # fills a bucket alone: a view, not a copy
            assert np.shares_memory(bucket.flat, big.numpy())
        else:
            addresses.add(bucket.flat.__array_interface__["data"][0])
    assert [list(s) for s in seen] == [["a", "b"], ["big"], ["c"], ["d"]]
    assert len(addresses) == 1  # one staging buffer, no allocation per bucket
    for name, tensor in tensors:
        assert torch.equal(next(s[name] for s in seen if name in s), tensor)


def test_export_names_are_the_plain_model_names():
    model = tiny_llama()
    names = [name for name, _ in iter_export_tensors(model)]
    assert names == [name for name, _ in model.named_parameters()]
    assert "lm_head.weight" not in names  # tied to embed_tokens: sent once


def test_lora_is_merged_and_the_trainer_model_is_untouched():
    base = tiny_llama()
    peft_model = lora_wrapped(base)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    exported = {name: t.clone() for name, t in iter_export_tensors(peft_model)}

    merged = copy.deepcopy(peft_model).merge_and_unload()
    expected = dict(merged.named_parameters())
    assert list(exported) == list(expected) == [n for n, _ in base.named_parameters()]
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=0)
        assert not tensor.requires_grad
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(exported[q], dict(base.named_parameters())[q])  # delta is real
    for name, param in peft_model.named_parameters():
        assert torch.equal(param, before[name]), name
    assert state_fingerprint(peft_model) == pytest.approx(state_fingerprint(merged), abs=1e-4)


def test_dora_is_merged_as_peft_merges_it():
    base = tiny_llama()
    peft_model = lora_wrapped(base, use_dora=True)
    exported = {name: t.clone() for name, t in iter_export_tensors(peft_model)}
    expected = dict(copy.deepcopy(peft_model).merge_and_unload().named_parameters())
    assert list(exported) == list(expected)
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=1e-5)
    q = "model.layers.0.self_attn.q_proj.weight"
    plain = {name: t.clone() for name, t in iter_export_tensors(lora_wrapped(base))}
    assert not torch.allclose(exported[q], plain[q])  # the magnitudes count, not only B A


def test_export_unwraps_a_deepspeed_style_engine():
    class Engine(torch.nn.Module):  # what DeepSpeedEngine and DDP look like from outside
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = tiny_llama()
    assert [n for n, _ in iter_export_tensors(Engine(model))] == \
        [n for n, _ in model.named_parameters()]


def test_apply_buckets_makes_a_fresh_model_equal():
    source, target = lora_wrapped(tiny_llama(0)), tiny_llama(1)
    applied = sum(apply_bucket(target, b)
                  for b in make_buckets(iter_export_tensors(source), bucket_bytes=4096))
    assert applied == len(list(target.named_parameters()))
    merged = copy.deepcopy(source).merge_and_unload()
    for (name, want), (_, got) in zip(merged.state_dict().items(), target.state_dict().items()):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=name)
    assert state_fingerprint(target) == state_fingerprint(source)


def test_apply_casts_dtype():
    model = torch.nn.Linear(2, 2, bias=False)
    weight = torch.randn(2, 2, dtype=torch.float64)
    (bucket,) = make_buckets([("weight", weight)], 1024)
    apply_bucket(model, bucket)
    assert model.weight.dtype == torch.float32
    torch.testing.assert_close(model.weight.data, weight.float())


def test_unknown_name_raises_keyerror_and_changes_nothing():
    model = tiny_llama()
    before = state_fingerprint(model)
    (bucket,) = make_buckets([("model.norm.weight", torch.zeros(32)),
                              ("model.no_such.weight", torch.zeros(3))], 1 << 20)
    with pytest.raises(KeyError, match="model.no_such.weight"):
        apply_bucket(model, bucket)
    assert state_fingerprint(model) == before
    (bucket,) = make_buckets([("model.norm.weight", torch.zeros(31))], 1 << 20)
    with pytest.raises(ValueError, match="shape"):
        apply_bucket(model, bucket)


def test_shared_memory_buckets_round_trip_and_reuse_their_files(tmp_path):
    from culture_rl.distributed.weight_sync import SharedBucket, SharedStaging

    model = tiny_llama(0)
    staging = SharedStaging(root=str(tmp_path))
    try:
        first = list(make_buckets(iter_export_tensors(model), 4096, shared=staging))
        assert all(isinstance(b, SharedBucket) for b in first)
        fresh = tiny_llama(1)
        for bucket in first:
            apply_bucket(fresh, bucket)
        assert state_fingerprint(fresh) == state_fingerprint(model)
        again = list(make_buckets(iter_export_tensors(model), 4096, shared=staging))
        assert [b.path for b in again] == [b.path for b in first]  # same files, no new ones
    finally:
        staging.close()
    assert not any(tmp_path.iterdir())


def test_shared_pages_become_the_receivers_weights_and_the_next_sync_updates_them(tmp_path):
    from culture_rl.distributed.weight_sync import SharedStaging

    trainer, receiver, copier = tiny_llama(0), tiny_llama(1), tiny_llama(1)
    staging = SharedStaging(root=str(tmp_path))
    try:
        for bucket in make_buckets(iter_export_tensors(trainer), 4096, shared=staging,
                                   share_pages=True):
            apply_bucket(receiver, bucket)
        for bucket in make_buckets(iter_export_tensors(trainer), 4096, shared=staging):
            apply_bucket(copier, bucket)  # not marked: copied out as before
        assert state_fingerprint(receiver) == state_fingerprint(trainer)
        assert state_fingerprint(copier) == state_fingerprint(trainer)
        q = "model.layers.0.self_attn.q_proj.weight"
        shared = dict(receiver.named_parameters())[q]
        assert not shared.is_set_to(dict(copier.named_parameters())[q])
        with torch.no_grad():  # the trainer steps; the next sync rewrites the pages in place
            for param in trainer.parameters():
                param.add_(0.5)
        pointer = shared.data_ptr()
        buckets = list(make_buckets(iter_export_tensors(trainer), 4096, shared=staging,
                                    share_pages=True))
        assert state_fingerprint(receiver) == state_fingerprint(trainer)  # before any apply
        for bucket in buckets:
            apply_bucket(receiver, bucket)
        assert dict(receiver.named_parameters())[q].data_ptr() == pointer  # no copy
        assert state_fingerprint(copier) != state_fingerprint(trainer)  # the copier did copy
        with torch.no_grad():  # the receiver still generates from its shared weights
            out = receiver(input_ids=torch.tensor([[1, 2, 3]])).logits
        assert torch.isfinite(out).all()
        half = tiny_llama(1).to(torch.bfloat16)  # another dtype: copied, cast
        for bucket in make_buckets(iter_export_tensors(trainer), 4096, shared=staging,
                                   share_pages=True):
            apply_bucket(half, bucket)
        assert dict(half.named_parameters())[q].dtype == torch.bfloat16
        # A copying sync into a receiver that shares pages gives it its own memory again
        # (a copy into the read-only pages would fault).
        for bucket in make_buckets(iter_export_tensors(copier), 4096, shared=staging):
            apply_bucket(receiver, bucket)
        assert state_fingerprint(receiver) == state_fingerprint(copier)
        assert dict(receiver.named_parameters())[q].data_ptr() != pointer
    finally:
        staging.close()


# ------------------------------------------------------------------ collective transport helpers


def received(bucket: BroadcastBucket, flat: torch.Tensor) -> BroadcastBucket:
    """What a receiver makes of a broadcast bucket: its metadata plus its own copy of the
    bytes, viewed in the bucket's dtype."""
    assert flat.dtype == torch.uint8 and flat.numel() == bucket.nbytes
    return BroadcastBucket(bucket.names, bucket.shapes, bucket.dtype, bucket.nbytes,
                           flat.clone().view(getattr(torch, bucket.dtype)))


def test_broadcast_buckets_group_like_make_buckets_and_round_trip_in_their_own_dtype():
    tensors = [("a", torch.randn(10)), ("b", torch.randn(3, 4)), ("c", torch.randn(5)),
               ("d", torch.arange(6, dtype=torch.int64)), ("e", torch.randn(2, 2).t()),
               ("big", torch.randn(100)), ("h", torch.randn(4, 3).to(torch.bfloat16))]
    staging = _BroadcastStaging(torch.device("cpu"), wait=lambda work, index: None)
    got = [received(bucket, flat) for bucket, flat in pack_broadcast_buckets(tensors, 100,
                                                                               staging)]
    want = [b.names for b in make_buckets(tensors, bucket_bytes=100)]
    assert [b.names for b in got] == want == [["a", "b"], ["c"], ["d"], ["e"], ["big"], ["h"]]
    assert [b.dtype for b in got] == ["float32", "float32", "int64", "float32", "float32",
                                      "bfloat16"]
    assert [b.nbytes for b in got] == [88, 20, 48, 16, 400, 24]
    unpacked = dict(pair for b in got for pair in unpack_bucket(b))
    for name, tensor in tensors:
        assert unpacked[name].dtype == tensor.dtype and torch.equal(unpacked[name], tensor)
    model = torch.nn.Linear(3, 4, bias=False)  # float32: a bf16 bucket is cast on apply
    bf16 = next(b for b in got if b.names == ["h"])
    assert apply_bucket(model, BroadcastBucket(["weight"], bf16.shapes, bf16.dtype,
                                               bf16.nbytes, bf16.received)) == 1
    assert torch.equal(model.weight, tensors[-1][1].float())


def test_broadcast_staging_alternates_two_buffers_and_waits_before_reusing_one():
    waited: list[str] = []
    staging = _BroadcastStaging(torch.device("cpu"),
                                wait=lambda work, index: waited.append(work))
    tensors = [(str(i), torch.full((4,), float(i))) for i in range(5)]  # 16 B each, 1 a bucket
    addresses = []
    for index, (bucket, flat) in enumerate(pack_broadcast_buckets(tensors, 16, staging)):
        addresses.append(flat.data_ptr())
        # bucket k's buffer was last broadcast by bucket k-2: waited for before packing it
        assert waited == [f"work{k}" for k in range(index - 1)]
        staging.sent(f"work{index}", index)
    assert addresses[0::2] == [addresses[0]] * 3 and addresses[1::2] == [addresses[1]] * 2
    assert addresses[0] != addresses[1]
    staging.drain()
    assert sorted(waited) == [f"work{k}" for k in range(5)]


def test_unpacking_a_broadcast_bucket_before_it_is_received_is_an_error():
    with pytest.raises(ValueError, match="nothing received"):
        unpack_bucket(BroadcastBucket(["w"], [(2,)], "float32", 8))


def test_shared_gpus_finds_ranks_on_one_gpu_of_one_node():
    peers = [{"node": "n1", "gpu": "GPU-a"}, {"node": "n1", "gpu": "GPU-b"},
             {"node": "n2", "gpu": "GPU-a"}, {"node": "n1", "gpu": "GPU-a"},
             {"node": "n1", "gpu": None}, {"node": "n1", "gpu": None}]
    assert shared_gpus(peers) == [(0, 3)]  # same UUID on another node is another GPU
    assert shared_gpus(peers[:3]) == []


def test_collective_backend_follows_the_weights_device():
    assert default_collective_backend(tiny_llama()) == "gloo"
    assert default_collective_backend(torch.nn.Module()) == "gloo"  # no weights at all


def test_unknown_transport_and_backend_are_rejected():
    with pytest.raises(ValueError, match="collective"):
        sync_weights(tiny_llama(), [], 1, transport="nccl")
    with pytest.raises(ValueError, match="collective_backend"):
        sync_weights(tiny_llama(), [], 1, transport="collective", collective_backend="mpi")
