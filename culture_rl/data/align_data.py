"""Resolve a config into the data an ALIGN run uses: world, target norms, cue split, survey.

Everything here runs on the driver *before* any Ray work or run-folder write, so a bad file is a
one-line DataError and nothing half-written is left behind. The synthetic world is written in
the real file formats and read back through the same loaders a user's files go through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from culture_rl.config import ExperimentConfig
from culture_rl.data import examples
from culture_rl.data.surveys import SurveyQuestion, load_survey
from culture_rl.data.swow import AssociationNorms, load_swow
from culture_rl.data.synthetic import CultureWorld, generate_world
from culture_rl.core.errors import ConfigError


@dataclass
class AlignData:
    target_culture: str
    norms_by_culture: dict[str, AssociationNorms]  # the target plus, for the world, the others
    split: dict[str, list[str]]  # cue split of the target culture's norms
    survey: list[SurveyQuestion]
    corpus: list[str]  # base corpus (synthetic world only)
    world: CultureWorld | None
    world_files: dict[str, Path] | None  # the written synthetic world, by role


def world_dir(config: ExperimentConfig) -> Path:
    return config.run_dir / "world"


def same_world_settings(written: dict, world) -> bool:
    """Whether a written world's settings are ``world``'s. A setting added to WorldConfig after
    the world was written counts as its default (a new option must not orphan every existing
    run folder); a written setting WorldConfig no longer has is a difference."""
    current = world.model_dump()
    defaults = type(world)().model_dump()
    if set(written) - set(current):
        return False
    return all(written.get(key, defaults[key]) == value for key, value in current.items())


def synthesise_world(config: ExperimentConfig, world: CultureWorld | None = None
                     ) -> tuple[CultureWorld, dict[str, Path]]:
    """Generate the world (unless given); write it once to ``<run dir>/world`` (atomically, by
    rename)."""
    world = generate_world(config.world) if world is None else world
    folder = world_dir(config)
    meta = folder / "world.json"
    if meta.is_file():
        written = json.loads(meta.read_text("utf-8"))
        if not same_world_settings(written.get("config") or {}, config.world):
            raise ConfigError(f"{folder} holds a world made with other settings; use another "
                              "run.name or restore the world settings", field="world")
        return world, {k: folder / v for k, v in written["files"].items()}
    partial = folder.with_name("world.partial")
    paths = world.write(partial)
    partial.rename(folder)
    return world, {k: folder / p.relative_to(partial) for k, p in paths.items()}


def load_align_data(config: ExperimentConfig, *, write_world: bool = True) -> AlignData:
    data = config.data
    # The user's files and data.culture are checked before the synthetic world is written: the
    # run folder may already hold a run, and a bad input must leave it as it was.
    survey = (load_survey(data.survey_path, skip_mismatched=data.skip_mismatched_survey_rows)
              if data.survey_path else None)
    user_norms = (load_swow(data.swow_path, country=data.country,
                            native_language=data.native_language) if data.swow_path else None)
    world = paths = None
    if user_norms is None or survey is None:
        world = generate_world(config.world)
        if user_norms is None:
            try:
                target = world.culture(data.culture).name
            except KeyError as err:
                raise ConfigError(str(err.args[0]), field="data.culture") from None
        if write_world:
            world, paths = synthesise_world(config, world)
    if survey is None:
        survey = load_survey(paths["survey_jsonl"]) if paths is not None else world.survey

    if user_norms is not None:
        target = data.culture or Path(data.swow_path).stem
        norms = {target: user_norms}
        corpus: list[str] = []
    else:
        norms = {}
        for culture in world.cultures:
            norms[culture.name] = (load_swow(paths[f"swow_{culture.name}"]) if paths
                                   else world.norms[culture.name])
        corpus = world.corpus
    split = examples.split_cues(list(norms[target]), seed=data.split_seed)
    return AlignData(target, norms, split, survey, corpus, world, paths)


def resolve_cultures(keys, data: AlignData, known: list[str], field: str,
                     missing: str = "is not in the data") -> list[str]:
    """Culture names for ``keys`` (names, or indices of the synthetic world), each one of
    ``known``, in order and once each; a ConfigError naming ``field`` otherwise."""
    chosen = []
    for key in keys:
        name = key
        if data.world is not None:
            try:
                name = data.world.culture(key).name
            except KeyError as err:
                raise ConfigError(str(err.args[0]), field=field) from None
        if name not in known:
            raise ConfigError(f"culture {key!r} {missing} (have {', '.join(known)})",
                              field=field)
        chosen.append(name)
    return list(dict.fromkeys(chosen))
