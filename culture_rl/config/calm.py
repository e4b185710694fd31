"""The ``calm:`` config section: CALM's modules, their ablation flags and loss weights.

``ExperimentConfig.calm`` (culture_rl/config/__init__.py). Every module of
:mod:`culture_rl.models.calm` is one flag (``calm.<module>.enabled=false``), so each ablation of
the paper is one override. What each option means, and why its default is what it is, is written
in the "Design choices" section of :mod:`culture_rl.models.calm`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from culture_rl.config.base import FieldProblem, ConfigSection


class DisentangleConfig(ConfigSection):
    enabled: bool = Field(True, description="Three projection heads (task semantics, explicit "
                          "cultural concepts, latent cultural signals) with the orthogonality "
                          "loss and the explicit part's culture (and concept) classifier. "
                          "False: one shared projection serves as both cultural parts, with no "
                          "orthogonality and no culture term (the 'w/o disentanglement' "
                          "ablation).")
    orthogonal_cultural_parts: bool = Field(False, description="Also decorrelate the explicit "
                                            "part from the latent part (by default only task "
                                            "semantics is kept apart from both).")


class ContrastiveConfig(ConfigSection):
    enabled: bool = Field(True, description="Supervised contrastive loss (Khosla et al. 2020) "
                          "over the explicit cultural representations, culture as the "
                          "positive key.")
    temperature: float = Field(0.1, gt=0, description="Temperature of the contrastive loss "
                               "(Khosla et al.: 0.1).")


class PrototypeConfig(ConfigSection):
    enabled: bool = Field(True, description="Learnable prototypes per culture (and per concept) "
                          "that define the cultural clusters, with the prototype loss; they "
                          "are also keys of the cross-attention.")
    temperature: float = Field(0.1, gt=0, description="Temperature of the cosine similarities "
                               "in the prototype loss.")
    per_concept: bool = Field(True, description="Also learn one prototype per cultural concept "
                              "(when the data has concept labels).")


class CrossAttentionConfig(ConfigSection):
    enabled: bool = Field(True, description="Explicit-concept features (queries) attend over "
                          "the prototypes and the latent signals (keys/values), with a "
                          "residual connection. False: the explicit features pass unchanged.")
    num_heads: int = Field(4, gt=0, description="Attention heads (must divide calm.dim).")
    latent_tokens: bool = Field(True, description="Keys/values hold the latent signals of every "
                                "non-pad token; false: only their pooled vector.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Attention dropout.")


class MoEConfig(ConfigSection):
    enabled: bool = Field(True, description="Mixture-of-Experts with top-k gating and the "
                          "load-balancing loss. False: one dense projection (no gate weights, "
                          "no balance term).")
    num_experts: int = Field(4, ge=2, description="Experts, one per cultural dimension (the "
                             "synthetic world: world.num_value_dims).")
    top_k: int = Field(2, gt=0, description="Experts each sample is routed to (softmax over "
                       "the top-k router logits).")
    expert_hidden_size: int = Field(128, ge=0, description="Hidden width of each expert MLP "
                                    "(0: a linear expert).")


class FusionConfig(ConfigSection):
    enabled: bool = Field(True, description="Gated fusion h' = h + g * W(z) of the MoE output "
                          "with the model's hidden state into the identity state, injected into "
                          "the LM (calm.injection). False: nothing is injected and the LM is "
                          "exactly the base model.")
    gate: Literal["scalar", "channel"] = Field("scalar", description="One gate value per "
                                               "position ('scalar') or one per hidden channel.")
    gate_bias_init: float = Field(-2.0, description="Initial bias of the gate logit: sigmoid(-2) "
                                  "= 0.12, so training starts close to the base model but every "
                                  "fusion weight gets a gradient from the first step.")


class HeadsConfig(ConfigSection):
    lm: bool = Field(True, description="LM (generation) loss of the wrapped model, with the "
                     "injection, when the batch has labels.")
    classification: bool = Field(True, description="Value identification / classification head "
                                 "over num_labels on the identity state (and task semantics), "
                                 "trained when the batch has class labels.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the classification "
                           "head.")


class CalmTaskConfig(ConfigSection):
    """``calm.task``: which value-identification task CALM, the baseline and the ablations are
    trained and scored on."""

    name: Literal["statements", "culture_dependent"] = Field(
        "statements", description="'culture_dependent' (the quickstart's): the harder task "
        "built from the "
        "synthetic world (culture_rl/data/value_tasks.py): the same act expresses a different "
        "value in each culture (following the cultures' value loadings), each act's meaning is "
        "withheld from training in one culture, held-out statements use wording training never "
        "shows, and some training labels are noisy; its own train/held-out split "
        "(calm.train.eval_fraction unused; needs the synthetic world, not "
        "data.statements_path). 'statements': data.statements_path or the world's "
        "own value statements (one fixed phrase per value: every model reaches 100 %), split "
        "by calm.train.eval_fraction.")
    acts_per_value: int = Field(6, gt=0, description="culture_dependent: acts per value "
                                "dimension (object words of the lexicon, each with its group's "
                                "kind word); at least cultures x unseen_per_culture.")
    unseen_per_culture: int = Field(2, ge=0, description="culture_dependent: acts per culture "
                                    "and value whose meaning in that culture is only held out "
                                    "(the 'unseen' subset); each act is unseen in at most one "
                                    "culture.")
    train_per_pair: int = Field(6, gt=0, description="culture_dependent: training statements "
                                "per seen (act, culture) pair.")
    heldout_per_pair: int = Field(1, ge=0, description="culture_dependent: held-out statements "
                                  "per seen (act, culture) pair (the 'seen' subset: new "
                                  "wording only).")
    heldout_per_unseen_pair: int = Field(2, gt=0, description="culture_dependent: held-out "
                                         "statements per unseen (act, culture) pair.")
    label_noise: float = Field(0.1, ge=0, lt=1, description="culture_dependent: share of "
                               "training labels replaced by another value (held-out labels "
                               "are clean).")
    distractor_rate: float = Field(0.5, ge=0, le=1, description="culture_dependent: share of "
                                   "statements with a distractor clause naming a cue word.")
    seed: int | None = Field(None, description="culture_dependent: seed of the act groups, the "
                             "unseen pairs, the wording and the noise (empty: run.seed). "
                             "Settings were tuned on other seeds than the reported one.")


class CalmTrainConfig(ConfigSection):
    """``calm.train``: the `culture-rl calm` stage (Ray Train + the DeepSpeed strategy)."""

    epochs: int = Field(4, gt=0, description="Passes over the training statements.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: epochs "
                           "decide).")
    learning_rate: float = Field(2e-3, gt=0, description="Peak learning rate of the base "
                                 "model's trainable weights (LoRA adapters, or all weights).")
    calm_learning_rate: float = Field(3e-3, gt=0, description="Peak learning rate of the CALM "
                                      "modules and heads (freshly initialised, so higher).")
    lr_scheduler: Literal["constant", "cosine", "linear"] = Field(
        "cosine", description="Learning-rate schedule after warm-up.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    per_culture: int = Field(4, gt=0, description="Samples of every culture in each micro batch "
                             "(the contrastive and orthogonality losses are per micro batch): "
                             "micro batch = per_culture x cultures.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro batches per optimizer "
                                             "step.")
    max_seq_length: int = Field(64, gt=8, description="Sequences are truncated to this many "
                                "tokens.")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Seeded share of the statements "
                                 "held out for evaluation (stratified by culture and label).")
    lm_task: bool = Field(False, description="Also train the LM head on association SFT "
                          "prompt/completion rows of every culture (culture named in the "
                          "prompt); off: statements only (classification + cultural losses).")
    lm_rows_per_culture: int = Field(48, gt=0, description="lm_task: association rows per "
                                     "culture.")
    save_steps: int = Field(0, ge=0, description="Checkpoint every N steps (0: every epoch).")
    logging_steps: int = Field(2, gt=0, description="Log every loss term every N steps.")
    eval_steps: int = Field(0, ge=0, description="Also evaluate the held-out statements every N "
                            "steps (a learning curve in results.json; 0: at epoch ends only).")
    fault_injection_step: int = Field(0, ge=0, description="Testing aid: fail the run right "
                                      "after the checkpoint of this step, unless it resumed "
                                      "from a checkpoint (0: off).")
    compare: bool = Field(True, description="After training, train the baseline (the same data "
                          "and LoRA, only a linear classifier on the pooled hidden states: "
                          "every CALM module off) and one ablation per CALM module, and write "
                          "results.json / report.md.")
    ablations: list[Literal["disentangle", "contrastive", "prototypes", "cross_attention",
                            "moe", "fusion"]] = Field(
        ["disentangle", "contrastive", "prototypes", "cross_attention", "moe", "fusion"],
        description="CALM modules switched off in turn for the ablation table.")
    compare_epochs: int = Field(0, ge=0, description="Epochs of the ablation runs (0: "
                                "calm.train.epochs; the baseline always gets CALM's budget). "
                                "When it differs, CALM itself is also trained at this budget "
                                "('calm_short') for a like-for-like ablation table.")


class CalmConfig(ConfigSection):
    """``calm:``: CALM (Culturally Self-Aware Language Models, arXiv 2601.03483) modules."""

    dim: int = Field(64, gt=0, description="Width of the disentangled representations, "
                     "prototypes, cross-attention and experts.")
    feature_layer: int = Field(-1, description="Hidden-state index the CALM features are read "
                               "from (Hugging Face hidden_states: 0 = embeddings, i = after "
                               "decoder layer i, -1 = last, after the final norm).")
    pooling: Literal["mean", "last"] = Field("mean", description="Sequence-level features: "
                                             "masked mean over non-pad tokens, or the last "
                                             "non-pad token.")
    head_hidden_size: int = Field(256, ge=0, description="Hidden width of the disentanglement "
                                  "projection heads (0: linear heads).")
    input_norm: bool = Field(True, description="LayerNorm on the hidden states before the "
                             "heads (intermediate layers have large, uneven norms).")
    freeze_base: bool = Field(False, description="Freeze every parameter of the base model "
                              "(LoRA adapters included). False keeps the base model's own "
                              "requires_grad: a peft LoRA model trains its adapters, a plain "
                              "model trains all weights.")
    features_grad: bool = Field(True, description="Backpropagate the CALM losses into a "
                                "trainable base (LoRA/full) through the feature-reading pass; "
                                "false reads the features under no_grad (less memory).")
    injection: Literal["hook", "prefix", "none"] = Field(
        "hook", description="How the identity state enters the LM: 'hook' adds it to the hidden "
        "states of decoder layer calm.hook_layer (a forward hook), 'prefix' prepends "
        "calm.prefix_tokens soft tokens to the input embeddings, 'none' feeds only the "
        "classification head.")
    hook_layer: int | None = Field(None, description="injection 'hook': decoder layer whose "
                                   "output gets the identity (negative counts from the end; "
                                   "empty: the middle layer, (num_layers - 1) // 2).")
    prefix_tokens: int = Field(4, gt=0, le=128, description="injection 'prefix': soft prefix "
                               "tokens made from the identity state.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout inside the projection heads "
                           "and experts.")
    lambda_contrastive: float = Field(0.1, ge=0, description="Weight of the contrastive and "
                                      "prototype losses (lambda * (contrastive + prototype)).")
    lambda_orth: float = Field(0.1, ge=0, description="Weight of the orthogonality loss.")
    lambda_balance: float = Field(0.01, ge=0, description="Weight of the MoE load-balancing "
                                  "loss (Switch Transformer: 0.01).")
    lambda_culture: float = Field(0.5, ge=0, description="Weight of the explicit part's culture "
                                  "(and concept) cross-entropy.")
    disentangle: DisentangleConfig = Field(default_factory=DisentangleConfig,
                                           description="Disentanglement heads and losses.")
    contrastive: ContrastiveConfig = Field(default_factory=ContrastiveConfig,
                                           description="Supervised contrastive loss.")
    prototypes: PrototypeConfig = Field(default_factory=PrototypeConfig,
                                        description="Culture / concept prototypes.")
    cross_attention: CrossAttentionConfig = Field(default_factory=CrossAttentionConfig,
                                                  description="Cross-attention alignment.")
    moe: MoEConfig = Field(default_factory=MoEConfig, description="Mixture-of-Experts.")
    fusion: FusionConfig = Field(default_factory=FusionConfig,
                                 description="Identity-state fusion and its gate.")
    heads: HeadsConfig = Field(default_factory=HeadsConfig, description="LM and classification "
                               "heads.")
    task: CalmTaskConfig = Field(default_factory=CalmTaskConfig, description="The "
                                 "value-identification task (data and split).")
    demo: bool = Field(True, description="Run the CALM comparison (CALM, the LoRA baseline on "
                       "the same budget, the ablations) as the last stage of `culture-rl demo`, "
                       "into <run>/calm/, summary.json and the report; false: the faster demo "
                       "without it.")
    train: CalmTrainConfig = Field(default_factory=CalmTrainConfig, description="The "
                                   "`culture-rl calm` training stage, its evaluation and "
                                   "comparison runs.")

    @model_validator(mode="after")
    def _possible(self) -> "CalmConfig":
        if self.cross_attention.enabled and self.dim % self.cross_attention.num_heads:
            raise FieldProblem("cross_attention.num_heads", f"calm.dim {self.dim} is not "
                               f"divisible by num_heads {self.cross_attention.num_heads}")
        if self.moe.enabled and self.moe.top_k > self.moe.num_experts:
            raise FieldProblem("moe.top_k", f"top_k {self.moe.top_k} exceeds num_experts "
                               f"{self.moe.num_experts}")
        if self.disentangle.orthogonal_cultural_parts and not self.disentangle.enabled:
            raise FieldProblem("disentangle.orthogonal_cultural_parts", "needs "
                               "disentangle.enabled (without it the cultural parts are one "
                               "shared projection)")
        if not (self.heads.lm or self.heads.classification or self.disentangle.enabled
                or self.contrastive.enabled or self.prototypes.enabled):
            raise FieldProblem("heads", "no LM, classification, culture, contrastive or "
                               "prototype loss is on: nothing would train the representations")
        return self
