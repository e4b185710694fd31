"""CALM modules (culture_rl/models/calm.py) on a tiny Llama built from a config: pure losses
against hand computations, each module's shapes and gradients, ablation flags, both injection
modes (closed gate = base model exactly, prefix padding, generate), state round-trip, peft."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError

from culture_rl.config.calm import CalmConfig
from culture_rl.models.calm import (CalmModel, CulturalCrossAttention, CultureMoE,
                                    CulturePrototypes, Disentangler, IdentityFusion,
                                    build_calm_model, calm_parameters, calm_state_dict,
                                    extend_for_prefix, load_balancing_loss, load_calm_state,
                                    orthogonality_loss, pool_tokens, prototype_loss,
                                    routing_by_culture, supervised_contrastive_loss, top_k_gating)

VOCAB, HIDDEN, CULTURES, LABELS, CONCEPTS = 64, 32, 3, 5, 4


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def small_config(**overrides) -> CalmConfig:
    """Narrow modules so the whole file runs in seconds; overrides are dotted like the CLI's."""
    tree: dict = {"dim": 16, "head_hidden_size": 16, "cross_attention": {"num_heads": 2},
                  "moe": {"num_experts": 3, "top_k": 2, "expert_hidden_size": 8}}
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return CalmConfig.model_validate(tree)


def batch(seed: int = 1, size: int = 8, length: int = 7):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (size, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0  # right padding on one row
    mask[1, 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask,
            "labels": ids.masked_fill(mask == 0, -100),
            "culture_ids": torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])[:size],
            "concept_ids": torch.tensor([0, 1, 2, 3, 0, 1, 2, -100])[:size],
            "class_labels": (torch.arange(size) % LABELS)}


def wrap(config: CalmConfig, base=None, seed: int = 3) -> CalmModel:
    base = base if base is not None else tiny_llama()
    torch.manual_seed(seed)
    return build_calm_model(base, config, CULTURES, LABELS, CONCEPTS).eval()


def close_gate(model: CalmModel) -> None:
    with torch.no_grad():
        model.calm["fusion"].gate.bias.fill_(float("-inf"))


# ---- pure losses ------------------------------------------------------------------------------


def test_contrastive_loss_matches_hand_computation():
    # Unit vectors (scaled, to check the normalisation): dot products 1-2: .6, 1-3: 0,
    # 1-4: -.8, 2-3: .8, 2-4: 0, 3-4: .6; over tau = .5: 1.2, 0, -1.6, 1.6, 0, 1.2.
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.8, 0.6]])
    features = features * torch.tensor([[2.0], [3.0], [0.5], [1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    e = math.exp
    anchors = [-math.log(e(1.2) / (e(1.2) + e(0.0) + e(-1.6))),   # 1: positive 2
               -math.log(e(1.2) / (e(1.2) + e(1.6) + e(0.0))),    # 2: positive 1
               -math.log(e(1.2) / (e(0.0) + e(1.6) + e(1.2))),    # 3: positive 4
               -math.log(e(1.2) / (e(-1.6) + e(0.0) + e(1.2)))]   # 4: positive 3
    expected = sum(anchors) / 4
    assert expected == pytest.approx(0.6680402, abs=1e-6)
    loss = supervised_contrastive_loss(features, labels, temperature=0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-5)

    # Three positives of one class, one sample without positives (a negative, not an anchor):
    # each anchor averages log-probabilities over its two positives.
    labels = torch.tensor([0, 0, 0, 1])
    sims = {(0, 1): 1.2, (0, 2): 0.0, (0, 3): -1.6, (1, 2): 1.6, (1, 3): 0.0, (2, 3): 1.2}
    s = lambda i, j: sims[(min(i, j), max(i, j))]  # noqa: E731
    total = 0.0
    for i in range(3):
        denominator = sum(e(s(i, a)) for a in range(4) if a != i)
        positives = [p for p in range(3) if p != i]
        total += -sum(math.log(e(s(i, p)) / denominator) for p in positives) / len(positives)
    loss = supervised_contrastive_loss(features, labels, temperature=0.5)
    assert loss.item() == pytest.approx(total / 3, abs=1e-5)

    # Anchors with different numbers of positives (3 x two, 2 x one): the 1/|P(i)| is per
    # anchor, then anchors are averaged.
    unit = [(1.0, 0.0), (0.6, 0.8), (0.0, 1.0), (-0.8, 0.6), (0.8, -0.6)]
    labels = [0, 0, 0, 1, 1]
    dot = lambda i, j: unit[i][0] * unit[j][0] + unit[i][1] * unit[j][1]  # noqa: E731
    total = 0.0
    for i in range(5):
        denominator = sum(e(dot(i, a) / 0.5) for a in range(5) if a != i)
        positives = [p for p in range(5) if p != i and labels[p] == labels[i]]
        total += -sum(math.log(e(dot(i, p) / 0.5) / denominator) for p in positives) / len(
            positives)
    loss = supervised_contrastive_loss(torch.tensor(unit), torch.tensor(labels), 0.5)
    assert loss.item() == pytest.approx(total / 5, abs=1e-5)

    # Ignored samples take no part; no anchor at all gives 0 with a gradient path.
    ignored = supervised_contrastive_loss(torch.cat([features, torch.randn(2, 2)]),
                                          torch.tensor([0, 0, 1, 1, -100, -100]), 0.5)
    assert ignored.item() == pytest.approx(expected, abs=1e-5)
    lonely = torch.randn(3, 2, requires_grad=True)
    zero = supervised_contrastive_loss(lonely, torch.tensor([0, 1, 2]))
    assert zero.item() == 0.0 and zero.requires_grad


def test_orthogonality_loss_is_zero_when_uncorrelated_and_scale_free():
    a = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    b = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    assert orthogonality_loss(a, b).item() == pytest.approx(0.0, abs=1e-6)
    assert orthogonality_loss(a, a).item() == pytest.approx(1.0, abs=1e-4)
    assert orthogonality_loss(a, -3 * a + 7).item() == pytest.approx(1.0, abs=1e-4)
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randn(64, 8)
    dependent = orthogonality_loss(x, x @ torch.randn(8, 8))
    assert dependent > 5 * orthogonality_loss(x, y)
    assert orthogonality_loss(x, 100 * y).item() == pytest.approx(orthogonality_loss(x, y).item(),
                                                                  rel=1e-4)


def test_prototype_loss_is_cross_entropy_of_cosine_similarities():
    prototypes = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([1, 0])
    c = 1 / math.sqrt(2)
    first = -math.log(math.exp(c / 0.5) / (math.exp(c / 0.5) + math.exp(c / 0.5)))
    second = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + math.exp(0.0)))
    loss = prototype_loss(features, prototypes, labels, temperature=0.5)
    assert loss.item() == pytest.approx((first + second) / 2, abs=1e-5)


def test_top_k_gating_rows_sum_to_one_with_exactly_k_nonzeros():
    torch.manual_seed(0)
    logits = torch.randn(10, 5)
    weights, dispatch = top_k_gating(logits, 2)
    assert torch.allclose(weights.sum(-1), torch.ones(10))
    assert ((weights > 0).sum(-1) == 2).all() and torch.equal(weights > 0, dispatch)
    assert torch.equal(dispatch, torch.zeros_like(dispatch).scatter(-1, logits.topk(2).indices,
                                                                    True))
    moe = CultureMoE(6, 4, num_experts=5, top_k=3, hidden_size=8)
    out = moe(torch.randn(7, 6))
    assert out.output.shape == (7, 4) and out.gate_weights.shape == (7, 5)
    assert torch.allclose(out.gate_weights.sum(-1), torch.ones(7))
    assert ((out.gate_weights > 0).sum(-1) == 3).all()


def test_load_balancing_is_one_when_uniform_and_larger_when_collapsed():
    experts = 4
    uniform_probs = torch.full((experts, experts), 1 / experts)
    assert load_balancing_loss(uniform_probs, torch.eye(experts, dtype=torch.bool)).item() == \
        pytest.approx(1.0)
    collapsed_probs = torch.zeros(8, experts)
    collapsed_probs[:, 0] = 1.0
    collapsed = torch.zeros(8, experts, dtype=torch.bool)
    collapsed[:, 0] = True
    assert load_balancing_loss(collapsed_probs, collapsed).item() == pytest.approx(experts)

    moe = CultureMoE(6, 4, num_experts=experts, top_k=2, hidden_size=0)
    with torch.no_grad():  # equal router logits: uniform probabilities
        moe.router.weight.zero_()
        moe.router.bias.zero_()
    x = torch.randn(16, 6)
    assert moe(x).load_balance.item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():  # the router prefers expert 0 for every input
        moe.router.bias.copy_(torch.tensor([8.0, 0.0, 0.0, 0.0]))
    assert moe(x).load_balance.item() > 1.5


def test_pooling_and_routing_by_culture():
    x = torch.arange(12.0).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert torch.equal(pool_tokens(x, mask, "mean"), torch.tensor([[1.0, 2.0], [9.0, 10.0]]))
    assert torch.equal(pool_tokens(x, mask, "last"), torch.tensor([[2.0, 3.0], [10.0, 11.0]]))
    gates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    table = routing_by_culture(gates, torch.tensor([0, 0, 1, -100]), num_cultures=3)
    assert torch.equal(table, torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.0, 0.0]]))


# ---- each module: shapes and gradients --------------------------------------------------------


def _all_params_have_grad(module: torch.nn.Module) -> list[str]:
    return [name for name, param in module.named_parameters()
            if param.grad is None or not param.grad.abs().sum() > 0]


@pytest.mark.parametrize("separate", [True, False])
def test_disentangler_shapes_and_gradients(separate):
    torch.manual_seed(0)
    module = Disentangler(HIDDEN, 8, CULTURES, CONCEPTS, separate=separate, head_hidden_size=12)
    hidden = torch.randn(4, 6, HIDDEN)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[0, 3:] = 0
    out = module(hidden, mask)
    assert out.explicit.shape == out.latent.shape == (4, 8)
    assert out.explicit_tokens.shape == out.latent_tokens.shape == (4, 6, 8)
    if separate:
        assert out.task.shape == (4, 8) and out.task_tokens.shape == (4, 6, 8)
        assert out.culture_logits.shape == (4, CULTURES)
        assert out.concept_logits.shape == (4, CONCEPTS)
        total = (out.task.sum() + out.explicit.sum() + out.latent.pow(2).sum()
                 + out.culture_logits.pow(2).sum() + out.concept_logits.pow(2).sum())
        # pooled = masked mean of the per-token features: pads do not count
        assert torch.allclose(out.explicit[0], out.explicit_tokens[0, :3].mean(0), atol=1e-6)
    else:
        assert out.task is None and out.explicit is out.latent
        total = out.explicit.pow(2).sum()
    total.backward()
    assert _all_params_have_grad(module) == []


def test_prototypes_are_unit_vectors_with_gradients():
    module = CulturePrototypes(CULTURES, 8, CONCEPTS)
    cultures, concepts = module()
    assert cultures.shape == (CULTURES, 8) and concepts.shape == (CONCEPTS, 8)
    assert torch.allclose(cultures.norm(dim=-1), torch.ones(CULTURES))
    assert torch.allclose(cultures @ cultures.T, torch.eye(CULTURES), atol=1e-5)  # orthogonal
    features = torch.randn(6, 8)
    loss = (prototype_loss(features, cultures, torch.tensor([0, 1, 2, 0, 1, 2]))
            + prototype_loss(features, concepts, torch.tensor([0, 1, 2, 3, 0, 1])))
    loss.backward()
    assert _all_params_have_grad(module) == []
    assert CulturePrototypes(CULTURES, 8)()[1] is None


def test_cross_attention_shapes_residual_and_padding():
    torch.manual_seed(0)
    module = CulturalCrossAttention(8, num_heads=2)
    query, prototypes = torch.randn(3, 8), torch.randn(4, 8)
    latent = torch.randn(3, 5, 8)
    valid = torch.ones(3, 5, dtype=torch.bool)
    valid[0, 2:] = False
    aligned, weights = module(query, prototypes, latent, valid)
    assert aligned.shape == (3, 8) and weights.shape == (3, 4 + 5)
    assert torch.allclose(weights.sum(-1), torch.ones(3), atol=1e-5)
    assert torch.all(weights[0, 4 + 2:] == 0)  # padded latent tokens get no attention
    changed = latent.clone()
    changed[0, 2:] = 100.0
    assert torch.allclose(module(query, prototypes, changed, valid)[0][0], aligned[0], atol=1e-6)
    aligned.pow(2).sum().backward()
    assert _all_params_have_grad(module) == []
    with torch.no_grad():  # residual: a zero attention output leaves the queries
        module.attention.out_proj.weight.zero_()
        module.attention.out_proj.bias.zero_()
    assert torch.equal(module(query, prototypes, latent, valid)[0], query)


def test_moe_shapes_and_gradients():
    torch.manual_seed(0)
    moe = CultureMoE(6, 4, num_experts=3, top_k=3, hidden_size=8)
    out = moe(torch.randn(5, 6))
    (out.output.pow(2).sum() + out.load_balance).backward()
    assert _all_params_have_grad(moe) == []


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_fusion_with_the_gate_closed_returns_the_hidden_state_exactly(gate):
    torch.manual_seed(0)
    fusion = IdentityFusion(HIDDEN, 8, gate=gate, gate_bias_init=-2.0)
    hidden, z = torch.randn(2, 5, HIDDEN), torch.randn(2, 8)
    fused, g, delta = fusion(hidden, z)
    assert fused.shape == hidden.shape and not torch.equal(fused, hidden)
    assert g.shape == (2, 5, 1 if gate == "scalar" else HIDDEN)
    assert torch.allclose(fused, hidden + g * fusion.proj(z)[:, None], atol=1e-6)
    fused.pow(2).sum().backward()
    assert _all_params_have_grad(fusion) == []
    with torch.no_grad():
        fusion.gate.bias.fill_(float("-inf"))
        for h in (hidden, hidden[:, 0], hidden.to(torch.bfloat16)):
            out, g, _ = fusion(h, z)
            assert torch.equal(out, h) and out.dtype == h.dtype and torch.all(g == 0)


# ---- the wrapper ------------------------------------------------------------------------------


@pytest.mark.parametrize("injection", ["hook", "prefix"])
def test_every_calm_parameter_gets_a_gradient_and_a_frozen_base_none(injection):
    # top_k = num_experts: with fewer, an expert no sample routes to has (rightly) no gradient.
    model = wrap(small_config(injection=injection, freeze_base=True, moe__top_k=3,
                              disentangle__orthogonal_cultural_parts=True)).train()
    out = model(**batch())
    assert set(out.losses) == {"lm", "classification", "culture", "contrastive", "prototype",
                               "orthogonality", "load_balance"}
    assert out.logits.shape == (8, 7, VOCAB) and out.class_logits.shape == (8, LABELS)
    assert out.gate_weights.shape == (8, 3) and out.identity.shape == (8, HIDDEN)
    assert out.features["attention"].shape == (8, CULTURES + CONCEPTS + 7)
    out.loss.backward()
    assert _all_params_have_grad(model.calm) == []
    assert all(param.grad is None for param in model.base.parameters())
    assert {id(p) for p in calm_parameters(model)} == {id(p) for p in model.calm.parameters()}


def test_total_loss_is_the_weighted_sum():
    config = small_config(lambda_contrastive=0.3, lambda_orth=0.7, lambda_balance=0.05,
                          lambda_culture=2.0)
    out = wrap(config)(**batch())
    t = {name: value.item() for name, value in out.losses.items()}
    expected = (t["lm"] + t["classification"] + 0.3 * (t["contrastive"] + t["prototype"])
                + 0.7 * t["orthogonality"] + 0.05 * t["load_balance"] + 2.0 * t["culture"])
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert all(value > 0 for value in t.values())


ALL_TERMS = {"lm", "classification", "culture", "contrastive", "prototype", "orthogonality",
             "load_balance"}


@pytest.mark.parametrize("flag, removed", [
    ("disentangle__enabled", {"orthogonality", "culture"}),
    ("contrastive__enabled", {"contrastive"}),
    ("prototypes__enabled", {"prototype"}),
    ("moe__enabled", {"load_balance"}),
    ("cross_attention__enabled", set()),
    ("fusion__enabled", set()),
    ("heads__classification", {"classification"}),
    ("heads__lm", {"lm"}),
])
def test_each_module_switched_off_removes_its_term(flag, removed):
    base = tiny_llama()
    out = wrap(small_config(**{flag: False}), base=base)(**batch())
    assert set(out.losses) == ALL_TERMS - removed
    parts = {"cross_attention__enabled": "attention", "fusion__enabled": "fusion_gate"}
    if flag in parts:
        assert parts[flag] not in out.features
    if flag == "moe__enabled":
        assert out.gate_weights is None
    if flag == "heads__classification":
        assert out.class_logits is None
    if flag == "fusion__enabled":
        assert out.identity is None
        data = batch()
        reference = base(input_ids=data["input_ids"], attention_mask=data["attention_mask"])
        real = data["attention_mask"].bool()
        assert torch.equal(out.logits[real], reference.logits[real])


def test_terms_need_their_labels():
    data = batch()
    model = wrap(small_config())
    out = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"])
    assert set(out.losses) == {"orthogonality", "load_balance"}
    assert out.class_logits is not None and out.gate_weights is not None
    # the reading pass alone gives the same classification and routing
    alone = model.identity_state(data["input_ids"], data["attention_mask"])
    assert torch.allclose(alone.class_logits, out.class_logits, atol=1e-6)
    assert torch.allclose(alone.gate_weights, out.gate_weights, atol=1e-6)


@pytest.mark.parametrize("injection", ["hook", "prefix"])
def test_closed_gate_gives_the_base_models_logits_exactly(injection):
    base = tiny_llama()
    model = wrap(small_config(injection=injection), base=base)
    data = batch()
    reference = base(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    open_logits = model(**data).logits
    assert open_logits.shape == reference.shape
    assert not torch.allclose(open_logits, reference, atol=1e-4)  # the injection is there
    close_gate(model)
    closed = model(**data)
    # Every real token's logits; pads differ (CALM counts their positions as 0, as generate).
    real = data["attention_mask"].bool()
    assert torch.equal(closed.logits[real], reference[real])
    assert torch.all(closed.features["fusion_gate"] == 0)
    assert torch.isfinite(closed.identity).all()  # no NaN from the -inf bias
    prompt = data["input_ids"][2:4]
    assert torch.equal(model.generate(prompt, max_new_tokens=4, do_sample=False),
                       base.generate(prompt, max_new_tokens=4, do_sample=False))


def test_feature_layer_pooling_and_hook_layer_are_honoured():
    base = tiny_llama()
    model = wrap(small_config(feature_layer=1, pooling="last", hook_layer=-1), base=base)
    data = batch()
    reference = base(input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                     output_hidden_states=True)
    layers = base.model.layers
    hooks_before = len(layers[1]._forward_hooks)
    outputs: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    handles = [layers[i].register_forward_hook(
        lambda module, args, out, i=i: outputs[i].append(out[0] if isinstance(out, tuple)
                                                         else out)) for i in (0, 1)]
    try:
        out = model(**data)
    finally:
        for handle in handles:
            handle.remove()
    expected = model.calm["disentangler"](reference.hidden_states[1], data["attention_mask"])
    assert torch.allclose(out.features["explicit"], expected.explicit, atol=1e-6)
    # Reading pass + injection pass. The capture hooks were registered before the injection
    # hook, so they see layer outputs before it; the logits are those of layer 1's output
    # fused with the identity, then the final norm and the LM head.
    assert len(outputs[0]) == len(outputs[1]) == 2
    fused = model.calm["fusion"](outputs[1][1], out.features["moe"])[0]
    expected_logits = base.lm_head(base.model.norm(fused))
    assert torch.allclose(out.logits, expected_logits, atol=1e-5)
    assert not torch.allclose(out.logits, reference.logits, atol=1e-4)
    assert len(layers[1]._forward_hooks) == hooks_before  # the injection hook is gone


def test_extend_for_prefix_pads_mask_and_labels():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    labels = torch.tensor([[5, 6, -100], [7, 8, 9]])
    ext_mask, ext_labels = extend_for_prefix(mask, labels, 2)
    assert torch.equal(ext_mask, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]))
    assert torch.equal(ext_labels, torch.tensor([[-100, -100, 5, 6, -100],
                                                 [-100, -100, 7, 8, 9]]))
    ext_mask, none = extend_for_prefix(mask, None, 2, active=torch.tensor([True, False]))
    assert none is None and torch.equal(ext_mask[:, :2], torch.tensor([[1, 1], [0, 0]]))


def test_prefix_injection_feeds_the_lm_padded_inputs():
    model = wrap(small_config(injection="prefix", prefix_tokens=3))
    seen = {}

    def capture(module, args, kwargs):
        seen.update(kwargs)

    handle = model.base.register_forward_pre_hook(capture, with_kwargs=True)
    data = batch()
    try:
        out = model(**data)
    finally:
        handle.remove()
    assert seen.get("input_ids") is None
    assert seen["inputs_embeds"].shape == (8, 3 + 7, HIDDEN)
    assert torch.equal(seen["attention_mask"][:, :3], torch.ones(8, 3, dtype=torch.long))
    assert torch.equal(seen["attention_mask"][:, 3:], data["attention_mask"])
    assert torch.all(seen["labels"][:, :3] == -100)
    assert torch.equal(seen["labels"][:, 3:], data["labels"])
    embeddings = model.base.get_input_embeddings()(data["input_ids"])
    assert torch.equal(seen["inputs_embeds"][:, 3:], embeddings)
    assert out.logits.shape == (8, 7, VOCAB)


@pytest.mark.parametrize("injection", ["hook", "prefix"])
def test_generate_runs_with_the_injection(injection):
    base = tiny_llama()
    model = wrap(small_config(injection=injection, fusion__gate_bias_init=6.0), base=base)
    with torch.no_grad():
        model.calm["fusion"].proj.weight.mul_(20)
    prompt = torch.randint(1, VOCAB, (3, 5), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0  # left padding
    out = model.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert out.shape == (3, 11) and torch.equal(out[:, :5], prompt)
    plain = base.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert not torch.equal(out, plain)  # the identity reached the generated tokens
    sampled = model.generate(prompt, attention_mask=mask, max_new_tokens=3, do_sample=True,
                             num_return_sequences=2, return_dict_in_generate=True)
    assert sampled.sequences.shape == (6, 8)
    assert torch.equal(sampled.sequences[::2, :5], prompt)


def test_calm_state_dict_round_trip_on_a_fresh_wrapper():
    base = tiny_llama()
    model = wrap(small_config(injection="prefix"), base=base, seed=3)
    data = batch()
    state = calm_state_dict(model)
    assert state and not any(name.startswith("base") for name in state)
    assert set(state) == set(model.calm.state_dict())
    fresh = wrap(small_config(injection="prefix"), base=copy.deepcopy(base), seed=11)
    before = fresh(**data)
    expected = model(**data)
    assert not torch.allclose(before.logits, expected.logits)
    load_calm_state(fresh, state)
    after = fresh(**data)
    assert torch.equal(after.logits, expected.logits)
    assert torch.equal(after.class_logits, expected.class_logits)
    with pytest.raises(RuntimeError, match="Missing key|Unexpected key"):
        load_calm_state(wrap(small_config(injection="hook")), state)


def test_peft_lora_base():
    from peft import LoraConfig, get_peft_model

    base = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8,
                                                   target_modules=["q_proj", "v_proj"]))
    model = wrap(small_config(injection="hook", moe__top_k=3), base=base).train()
    out = model(**batch())
    out.loss.backward()
    assert _all_params_have_grad(model.calm) == []
    lora_b = [p for n, p in base.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    assert all(p.grad is None for n, p in base.named_parameters() if "lora_" not in n)
    assert not any("lora" in name for name in calm_state_dict(model))
    model.eval()
    assert model.generate(batch()["input_ids"][:2], max_new_tokens=3,
                          do_sample=False).shape == (2, 10)


def test_hook_injection_survives_gradient_checkpointing():
    data = batch()
    grads = []
    for checkpointing in (False, True):
        base = tiny_llama()
        if checkpointing:
            if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5
                base.activation_checkpointing_enable({"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable({"use_reentrant": False})
        model = wrap(small_config(injection="hook"), base=base).train()
        model(**data).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.calm.parameters()
                                if p.grad is not None]
                               + [base.model.layers[0].self_attn.q_proj.weight.grad.flatten()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_calm_config_rejects_impossible_combinations():
    from culture_rl.config import describe_fields

    with pytest.raises(ValidationError, match="top_k 5 exceeds num_experts 4"):
        CalmConfig(moe={"num_experts": 4, "top_k": 5})
    with pytest.raises(ValidationError, match="not divisible by num_heads"):
        CalmConfig(dim=10, cross_attention={"num_heads": 4})
    CalmConfig(dim=10, cross_attention={"enabled": False, "num_heads": 4})
    with pytest.raises(ValidationError, match="needs disentangle.enabled"):
        CalmConfig(disentangle={"enabled": False, "orthogonal_cultural_parts": True})
    with pytest.raises(ValidationError, match="nothing would train"):
        CalmConfig(heads={"lm": False, "classification": False}, disentangle={"enabled": False},
                   contrastive={"enabled": False}, prototypes={"enabled": False})
    with pytest.raises(ValidationError, match="Extra inputs"):
        CalmConfig(moe={"experts": 4})
    with pytest.raises(ValidationError):
        CalmConfig(injection="adapter")
    lines = describe_fields(CalmConfig)
    assert len(lines) > 30 and not any(line.endswith("# None") for line in lines)
    with pytest.raises(ValueError, match="hook_layer 5"):
        wrap(small_config(hook_layer=5))
