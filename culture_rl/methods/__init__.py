"""The methods, one folder each, above the core (which imports none of them): ALIGN
(:mod:`.align`: SFT on association norms, PPO with the ranking reward), CultureSPA
(:mod:`.culturespa`), CALM with its reflection loop (:mod:`.calm`), and the tiny base model's
pretraining (:mod:`.pretrain`); plus eliciting a base model's own associations (:mod:`.elicit`)
and the quickstart that runs ALIGN end to end (:mod:`.quickstart`).

Every method module keeps one protocol, which the CLI and the Ray job entrypoints dispatch over
(the table is :data:`culture_rl.commands.COMMANDS`):

- ``plan(config)`` checks everything the run needs once -- registry names, the batch plan,
  cultures, data files, model paths -- and returns a plan; it starts no Ray work and writes no
  run folder, so bad input is one line and leaves nothing behind;
- ``run(plan)`` runs it (resuming from what a run folder holds) and returns its result;
- ``summary(result)`` is the line the CLI prints at the end (None when ``run`` printed a report).

Every plan is a :class:`MethodPlan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from culture_rl.config import ExperimentConfig
    from culture_rl.data.align_data import AlignData


@dataclass(frozen=True)
class MethodPlan:
    """What a method's ``plan(config)`` checked, for its ``run(plan)``."""
    config: ExperimentConfig
    data: AlignData
    # What the checks built, the method's own: the training job (pretrain, SFT, CALM), the
    # batch plan (PPO), the stage plan (CultureSPA); None for reflection.
    prepared: Any = None
