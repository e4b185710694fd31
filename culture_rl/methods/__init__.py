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
"""
