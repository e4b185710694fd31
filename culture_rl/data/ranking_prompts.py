"""ALIGN's ranking prompts (``ppo.ranking_words`` sampled associations of a cue, to be ordered
by how often a culture names them) and the held-out cues they are evaluated on: PPO trains on
them, and evaluation, reflection and the sweeps score them."""

from __future__ import annotations

from culture_rl.config import ExperimentConfig
from culture_rl.data import examples
from culture_rl.data.align_data import AlignData


def ranking_prompts(config: ExperimentConfig, data: AlignData, cues: list[str], seed: int,
                    per_cue: int, culture: str | None = None) -> list[dict]:
    """ALIGN ranking prompts for ``cues`` from ``culture``'s norms (default: the target's),
    tagged with that culture."""
    culture = culture or data.target_culture
    rows = examples.build_ranking_examples(data.norms_by_culture[culture], cues,
                                           n_words=config.ppo.ranking_words,
                                           language=config.data.language, seed=seed,
                                           per_cue=per_cue)
    return [{**row, "culture": culture} for row in rows]


def heldout_ranking_cues(config: ExperimentConfig, data: AlignData,
                         trained_split: str | None = None, limit: bool = True) -> list[str]:
    """Cues of ``eval.split`` that an online loop does not train on (``trained_split``,
    default ``ppo.prompt_split``), at most ``eval.max_cues`` with ``limit``."""
    split = config.eval.split
    cues = data.split["val"] + data.split["test"] if split == "heldout" else data.split[split]
    trained = set(data.split[trained_split or config.ppo.prompt_split])
    held = [c for c in cues if c not in trained]
    return held[:config.eval.max_cues] if limit and config.eval.max_cues else held


def eval_ranking_prompts(config: ExperimentConfig, data: AlignData,
                         culture: str | None = None) -> list[dict]:
    # A seed apart from the training prompts' and several word samples per cue: the held-out
    # mean rho is then a stable number even with few cues.
    return ranking_prompts(config, data, heldout_ranking_cues(config, data),
                           seed=config.run.seed + 1, per_cue=4, culture=culture)
