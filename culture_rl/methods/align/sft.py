"""ALIGN stage 1 and the tiny base model: build the training jobs from a config and run them.

``pretrain`` makes the culturally biased "vanilla" tiny model from the synthetic corpus (all
weights, plain LM loss); ``sft`` fine-tunes a base model with LoRA on the target culture's
association norms (completion-only loss). Both go through :func:`culture_rl.train.sft.run_stage`.

The method protocol (:mod:`culture_rl.methods`): :func:`plan` checks a config into a
:class:`~culture_rl.methods.MethodPlan`, :func:`run` trains it, :func:`summary` is the line the
CLI prints; the pretraining stage shares :func:`run` and :func:`summary`
(:mod:`culture_rl.methods.pretrain`).
"""

from __future__ import annotations

from pathlib import Path

from culture_rl.config import ExperimentConfig
from culture_rl.data import examples, prompts
from culture_rl.core.errors import ConfigError
from culture_rl.methods import MethodPlan
from culture_rl.models.loading import build_tiny_model, check_available, prepare_model
from culture_rl.train.sft import StageResult, TrainJob, run_stage
from culture_rl.data.align_data import AlignData, load_align_data

TINY = "tiny"


def stage_dir(config: ExperimentConfig, stage: str) -> Path:
    return config.run_dir / stage


def pretrained_tiny_path(config: ExperimentConfig) -> Path:
    return stage_dir(config, "pretrain") / "export" / "model"


def _heldout(config: ExperimentConfig, data: AlignData, culture: str, max_cues: int
             ) -> tuple[list[str], list[list[str]]]:
    norms = data.norms_by_culture[culture]
    cues = [c for c in data.split["val"] if c in norms][:max_cues]
    return ([prompts.association_prompt(c, config.data.language) for c in cues],
            [[w for w, _ in norms[c]] for c in cues])


def build_pretrain_job(config: ExperimentConfig, data: AlignData) -> TrainJob:
    if not data.corpus:
        raise ConfigError("pretraining needs the synthetic world's corpus; with your own model "
                          "skip `pretrain` and set model.path", field="data.swow_path")
    folder = stage_dir(config, "pretrain")
    if config.model.path == TINY:
        init = folder / "init"
        if not (init / "config.json").is_file():
            print(f"[pretrain] building the tiny model and tokenizer in {init}", flush=True)
            build_tiny_model(config.model, data.corpus, init, config.run.seed)
        model_path = str(init)
    else:
        model_path = config.model.path
        check_available(model_path)
    dominant = data.world.cultures[0].name if data.world else data.target_culture
    prompts_, human = _heldout(config, data, dominant, config.pretrain.eval_max_cues)
    return TrainJob(stage="pretrain", stage_dir=str(folder), model_path=model_path,
                    train=config.pretrain, deepspeed=config.deepspeed, lora=None,
                    train_rows=[{"text": doc} for doc in data.corpus], text_field="text",
                    heldout_prompts=prompts_, heldout_human=human, dtype=config.model.dtype,
                    trust_remote_code=config.model.trust_remote_code,
                    chat_template=config.model.chat_template, seed=config.run.seed,
                    eval_max_new_tokens=config.eval.max_new_tokens,
                    eval_batch_size=config.eval.batch_size)


def base_model_path(config: ExperimentConfig) -> str:
    """The model SFT starts from: the pretrained tiny model for ``tiny``, else model.path."""
    if config.model.path != TINY:
        return prepare_model(config.model.path)
    path = pretrained_tiny_path(config)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path is 'tiny' but {path} holds no pretrained tiny model; run "
                          "`culture-rl pretrain` with this config first", field="model.path")
    return str(path)


def build_sft_job(config: ExperimentConfig, data: AlignData) -> TrainJob:
    norms = data.norms_by_culture[data.target_culture]
    options = dict(language=config.data.language, fraction=config.data.resample_fraction,
                   max_associations=config.data.max_associations, seed=config.run.seed)
    train_rows = examples.build_sft_examples(norms, data.split["train"],
                                             examples_per_cue=config.data.examples_per_cue,
                                             **options)
    if not train_rows:
        raise ConfigError("no SFT examples: the training split has no cue with associations",
                          field="data.swow_path")
    eval_rows = examples.build_sft_examples(norms, data.split["val"], examples_per_cue=1,
                                            **options)
    prompts_, human = _heldout(config, data, data.target_culture,
                              config.sft.eval_max_cues)
    return TrainJob(stage="sft", stage_dir=str(stage_dir(config, "sft")),
                    model_path=base_model_path(config), train=config.sft,
                    deepspeed=config.deepspeed,
                    lora=config.lora if config.lora.enabled else None,
                    train_rows=train_rows, eval_rows=eval_rows, heldout_prompts=prompts_,
                    heldout_human=human, dtype=config.model.dtype,
                    trust_remote_code=config.model.trust_remote_code,
                    chat_template=config.model.chat_template, seed=config.run.seed,
                    eval_max_new_tokens=config.eval.max_new_tokens,
                    eval_batch_size=config.eval.batch_size)


def run_pretrain(config: ExperimentConfig, data: AlignData) -> StageResult:
    return run_stage(build_pretrain_job(config, data), config.resources)


def run_sft(config: ExperimentConfig, data: AlignData) -> StageResult:
    return run_stage(build_sft_job(config, data), config.resources)


def plan(config: ExperimentConfig) -> MethodPlan:
    """ALIGN SFT: the data loaded and the job built (every input checked) before any Ray work."""
    data = load_align_data(config)
    return MethodPlan(config, data, build_sft_job(config, data))


def run(plan: MethodPlan) -> StageResult:
    """Train the stage ``plan`` built (pretraining's too: :mod:`culture_rl.methods.pretrain`)."""
    return run_stage(plan.prepared, plan.config.resources)


def summary(result: StageResult) -> str:
    return f"{result.stage}: model in {result.model_dir}"
