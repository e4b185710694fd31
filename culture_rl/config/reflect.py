"""The ``reflect:`` config section: CALM's self-prompted reflective learning (`culture-rl reflect`).

``ExperimentConfig.reflect`` (in culture_rl/config). The loop runs on the PPO issue's parts: the
rollout workers (``rollout``), the reward scorer pool, the policy trainer and the weight sync, on
the actor groups sized by ``ppo_resources`` (the critic is not started). What each round does is
written in :mod:`culture_rl.rl.reflection_loop`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from culture_rl.config.base import FieldProblem, ConfigSection

REFLECTION_TASKS = ("associations", "ranking")


class ReflectConfig(ConfigSection):
    policy_path: str = Field("sft", description="Model the loop starts from: 'sft' (this run's "
                             "SFT export, trained first when missing), 'pretrain' (this run's "
                             "base model), 'calm' (this run's CALM export: the CALM model, "
                             "its identity state injected, trains its adapter and modules "
                             "further), a model folder, an export folder (its model/ is used) "
                             "or a local Hugging Face name.")
    task: Literal["associations", "ranking"] = Field(
        "associations", description="What the model answers and reflects on: 'associations' "
        "(list the words a person from the culture associates with a cue; reward P@k against "
        "that culture's norms) or 'ranking' (order given words by that culture's frequency; "
        "reward Spearman rho, ALIGN's).")
    reward: str | None = Field(None, description="Registered reward function; empty: "
                               "association_overlap for 'associations', ranking_spearman for "
                               "'ranking'.")
    cultures: list[str] = Field(default_factory=list, description="Cultures whose perspective "
                                "the prompts take (each prompt names its culture); empty: every "
                                "culture of the data.")
    prompt_split: Literal["train", "val", "test"] = Field(
        "train", description="Cue split the training prompts come from; held-out evaluation "
        "uses the other cues of eval.split.")
    prompts_per_round: int = Field(48, gt=0, description="Prompts per round, drawn in a "
                                   "seeded, resumable order over all cultures' prompts.")
    answers_per_prompt: int = Field(2, gt=0, description="Initial answers sampled per prompt.")
    revisions_per_answer: int = Field(4, gt=0, description="Revisions sampled per initial "
                                      "answer; the best-scoring one is compared with it.")
    rounds: int = Field(8, gt=0, description="Reflection rounds (each: answer, reflect and "
                        "revise, score, train, sync).")
    template: str | None = Field(None, description="Reflection prompt with {prompt} (the "
                                 "original prompt), {answer} (the model's initial answer) and "
                                 "{culture}; it should end where the revised answer starts. "
                                 "Empty: the built-in template of data.language (English or "
                                 "Chinese), which repeats the original prompt at its end.")
    revise_with: Literal["reflection", "resampling"] = Field(
        "reflection", description="How revisions are made: 'reflection' (the template: the "
        "model rereads its answer from the culture's perspective) or 'resampling' (the "
        "original prompt sampled again: best-of-N rejection sampling, the control that shows "
        "what reflection itself adds).")
    min_improvement: float = Field(0.0, ge=0, description="A revision becomes training data "
                                   "only when its reward exceeds the initial answer's by more "
                                   "than this.")
    require_finished: bool = Field(True, description="Only revisions that ended on their own "
                                   "(EOS before rollout.max_new_tokens) become training data: a "
                                   "revision cut off at the limit teaches the model not to "
                                   "stop.")
    sft_coef: float = Field(1.0, ge=0, description="Weight of the SFT loss on the revisions, "
                            "trained under the original prompt: the model learns to give the "
                            "improved answer directly.")
    preference_coef: float = Field(1.0, ge=0, description="Weight of the pairwise preference "
                                   "loss (DPO: revised over initial answer, both under the "
                                   "original prompt, against the starting model as reference).")
    beta: float = Field(0.1, gt=0, description="DPO temperature beta.")
    epochs: int = Field(1, gt=0, description="Passes over a round's pairs.")
    micro_batch_size: int = Field(4, gt=0, description="Pairs per forward pass per trainer "
                                  "rank (one optimizer step each). A round's pairs are repeated "
                                  "up to a multiple of micro batch x ranks, so every rank does "
                                  "the same number of steps.")
    learning_rate: float = Field(1e-5, gt=0, description="Policy learning rate (1e-5 suits "
                                 "LoRA on a 7B model; the tiny quickstart model uses 2e-4).")
    lora: bool = Field(True, description="Train a fresh LoRA adapter (the reference is the "
                       "starting model: the adapter off); false trains all weights.")
    eval_cues: int = Field(12, ge=0, description="Held-out cues per culture scored after every "
                           "round (greedy initial and revised answers); 0: no evaluation.")
    save_rounds: int = Field(1, ge=0, description="Checkpoint every N rounds (0: only at the "
                             "end).")
    fault_injection_round: int = Field(0, ge=0, description="Testing aid: stop the run with an "
                                       "error right after the checkpoint of this round, unless "
                                       "it resumed (0: off).")

    @model_validator(mode="after")
    def _template_fields(self) -> "ReflectConfig":
        if self.template is not None:
            for key in ("{prompt}", "{answer}"):
                if key not in self.template:
                    raise FieldProblem("template", f"the reflection template must contain "
                                       f"{key} (it has {self.template!r})")
            try:
                self.template.format(prompt="", answer="", culture="")
            except (KeyError, IndexError, ValueError) as err:
                raise FieldProblem("template", f"the reflection template has a field other "
                                   f"than {{prompt}}, {{answer}} and {{culture}}, or a stray "
                                   f"brace ({type(err).__name__}: {err})") from None
        if self.sft_coef == 0 and self.preference_coef == 0:
            raise FieldProblem("sft_coef", "sft_coef and preference_coef are both 0: the "
                               "policy would not train")
        return self
