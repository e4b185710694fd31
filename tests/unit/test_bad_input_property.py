"""Issue 10, "Bad input": every malformed input ends cleanly (property-based, hypothesis).

Each generated case runs the real CLI in-process (``culture_rl.cli.main``) and must end with exit
code 2 and exactly one stderr line ``culture-rl: error: ...`` naming where the problem is -- the
file and ``line N`` for data files, the file and the dotted field for configs ("command line"
for overrides), the flag or word for arguments -- with no traceback, and with the run folder
under ``run.storage_path`` gone afterwards or holding exactly what it held before.

Resource plans are checked by a running Ray inside the CLI, so ``check_plan`` and the sweep's
``max_concurrent`` are called directly with generated plans that cannot fit.

Every case is invalid by construction and ``ray.init`` is refused for the whole module: a case
that slipped through validation fails loudly here instead of starting Ray and training.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import re
import shutil
import string
import tempfile
import types
import typing
from pathlib import Path

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from culture_rl.cli import build_parser, main
from culture_rl.config import ExperimentConfig, parse_override
from culture_rl.core.errors import ResourceError
from tests.support import bad_input_counter as counter

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
BASE = yaml.safe_load(QUICKSTART.read_text("utf-8"))  # a valid tree the config faults go into
RUN_NAME = BASE["run"]["name"]

# Function-scoped fixtures (capsys) are not reset between examples: each case drains capsys and
# makes its own temporary folder. No example database: nothing is written into the repository.
PROPERTY = dict(deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------------- module fixtures


@pytest.fixture(scope="module", autouse=True)
def no_ray():
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("a bad-input case reached ray.init: it must fail before any Ray work")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray, "init", refuse)
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """One tiny saved model for `culture-rl eval --model` (eval checks it before the data)."""
    from tests.support.tiny_model import build_minimal_model

    return build_minimal_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def world_run(tmp_path_factory) -> Path:
    """A run folder as an earlier `culture-rl synth` left it (the synthetic world written)."""
    storage = tmp_path_factory.mktemp("template")
    assert main(["synth", "--config", str(QUICKSTART), f"run.storage_path={storage}"]) == 0
    return storage / RUN_NAME


# ------------------------------------------------------------------------------- helpers


def new_tmp() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="bad-input-")


def prepare_runs(tmp: Path, existing: str, world_run: Path | None = None) -> Path:
    """``<tmp>/runs``, empty ("none"), or holding this run's folder with a note ("marker") or
    also the world an earlier call wrote ("world")."""
    runs = tmp / "runs"
    if existing != "none":
        folder = runs / RUN_NAME
        folder.mkdir(parents=True)
        (folder / "notes.txt").write_text("an earlier run lives here\n", "utf-8")
        if existing == "world":
            shutil.copytree(world_run / "world", folder / "world")
    return runs


def snapshot(folder: Path) -> dict | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def run_cli(capsys, family: str, argv: list) -> tuple[int, str, str]:
    capsys.readouterr()
    counter.tried(family)
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse errors leave through _Parser.error, exit 2
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def check_clean(family: str, result, runs: Path, before, *needles: str,
                pattern: str | None = None) -> str:
    code, out, err = result
    assert code == 2, f"exit {code}: {err}{out[-2000:]}"
    assert "Traceback" not in err and "Traceback" not in out, err + out
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"{len(lines)} stderr lines: {err!r}"
    line = lines[0]
    assert line.startswith("culture-rl: error:"), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    if pattern is not None:
        assert re.search(pattern, line), f"{pattern!r} does not match {line!r}"
    assert snapshot(runs) == before, f"the call changed {runs}: {err}"
    counter.clean(family)
    return line


# Letters only, and no word YAML or pydantic would read as a bool, a number or null.
LOOSE_WORDS = {"y", "n", "t", "f", "yes", "no", "on", "off", "true", "false", "null", "nan",
               "inf", "infinity", "none"}
WORD = st.text(string.ascii_lowercase, min_size=1, max_size=8).filter(
    lambda w: w not in LOOSE_WORDS)
NAME = st.text(string.ascii_lowercase, min_size=3, max_size=8).filter(
    lambda w: w not in LOOSE_WORDS)


def set_path(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def render_override(value) -> str:
    """YAML flow text that parse_override reads back as ``value``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[:-3].strip() if text.endswith("...") else text


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------------- 1. configs

def _sections(model: type[BaseModel] = ExperimentConfig, prefix: str = ""):
    yield prefix, model
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _sections(info.annotation, f"{prefix}{name}.")


SECTIONS = [(prefix.rstrip("."), model) for prefix, model in _sections()]
# Every leaf field, except run.storage_path: the tests set it on the command line, which
# would hide a fault in the file.
LEAVES = [(f"{prefix}{name}", info) for prefix, model in _sections()
          for name, info in model.model_fields.items()
          if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel))
          and f"{prefix}{name}" != "run.storage_path"]


def _unwrap(annotation):
    """(base type, constraints) of ``X``, ``X | None`` or ``Annotated[X, ...]``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    metadata = []
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *metadata = typing.get_args(annotation)
    return annotation, metadata


def _violations(base, metadata) -> list:
    """Values that break the field's own constraints (bounds, length, pattern)."""
    out = []
    integer = base is int
    step = st.integers(0, 5)
    for m in metadata:
        if isinstance(m, annotated_types.Gt):
            out.append(step.map(lambda k, g=m.gt: g - k if integer else g - 0.5 * k))
        elif isinstance(m, annotated_types.Ge):
            out.append(step.map(lambda k, g=m.ge: g - 1 - k if integer else g - 0.25 - 0.5 * k))
        elif isinstance(m, annotated_types.Lt):
            out.append(step.map(lambda k, l=m.lt: l + k if integer else l + 0.5 * k))
        elif isinstance(m, annotated_types.Le):
            out.append(step.map(lambda k, l=m.le: l + 1 + k if integer else l + 0.5 + 0.5 * k))
        elif isinstance(m, annotated_types.MinLen) and m.min_length >= 1:
            out.append(st.just("" if base is str else []))
        elif getattr(m, "pattern", None):
            out.append(st.builds(lambda a, sep, b: a + sep + b, WORD,
                                 st.sampled_from([" ", "/", "*", ":", "@"]), WORD))
    return out


def _wrong_types(annotation) -> list:
    base, _ = _unwrap(annotation)
    lists = st.lists(st.integers(-9, 9), min_size=1, max_size=3)
    dicts = st.dictionaries(WORD, st.integers(0, 9), min_size=1, max_size=2)
    origin = typing.get_origin(base)
    if base is int:
        return [WORD, st.integers(-50, 50).map(lambda i: i + 0.5), lists, dicts]
    if base is float:
        return [WORD, lists, dicts, st.sampled_from([math.inf, -math.inf, math.nan])]
    if base is bool:
        return [WORD, st.integers(2, 99), lists, dicts]
    if base is str:
        return [st.lists(WORD, min_size=1, max_size=2), dicts, st.booleans()]
    if origin is typing.Literal:
        choices = typing.get_args(base)
        return [WORD.filter(lambda w: w not in choices), lists]
    if origin is list:
        (inner,) = typing.get_args(base)
        inner_base, inner_meta = _unwrap(inner)
        bad_items = [s.map(lambda v: [v]) for s in _wrong_types(inner)[:2]]
        bad_items += [s.map(lambda v: [v]) for s in _violations(inner_base, inner_meta)]
        return [WORD, dicts, *bad_items]
    if origin is dict:
        return [WORD, lists, st.dictionaries(WORD, lists, min_size=1, max_size=1)]
    raise NotImplementedError(f"no bad values for {annotation!r}")


def bad_values(info) -> st.SearchStrategy:
    base, metadata = _unwrap(info.annotation)
    return st.one_of(*_wrong_types(info.annotation), *_violations(base, metadata + info.metadata))


def _generates(info) -> bool:
    try:
        bad_values(info)
    except NotImplementedError:
        return False
    return True


# A field type the generator does not know yet is left out of the faults, and named by
# test_every_config_field_gets_faults (one clear failure, not a random one).
UNSUPPORTED = [dotted for dotted, info in LEAVES if not _generates(info)]
LEAVES = [(dotted, info) for dotted, info in LEAVES if dotted not in UNSUPPORTED]


def test_every_config_field_gets_faults():
    assert not UNSUPPORTED, f"teach _wrong_types these field types: {UNSUPPORTED}"


@st.composite
def field_faults(draw) -> tuple[str, object]:
    dotted, info = draw(st.sampled_from(LEAVES))
    return dotted, draw(bad_values(info))


@st.composite
def unknown_keys(draw) -> tuple[str, object]:
    prefix, model = draw(st.sampled_from(SECTIONS))
    name = draw(NAME.filter(lambda n: n not in model.model_fields and n != "extends"))
    return (f"{prefix}.{name}" if prefix else name), draw(st.integers(0, 9))


COMMANDS = st.sampled_from([["config", "show"], ["sft"], ["ppo"], ["eval"]])
PLACES = st.sampled_from(["file", "parent", "command line"])
EXISTING = st.sampled_from(["none", "marker"])


def write_config(tmp: Path, updates: dict, place: str) -> tuple[Path, list[str], str]:
    """The config file, the overrides and the source the error must name, with ``updates``
    (dotted -> value) in the config file, in the file it extends or on the command line."""
    tree, overrides = copy.deepcopy(BASE), []
    if place == "command line":
        overrides = [f"{dotted}={render_override(v)}" for dotted, v in updates.items()]
        for text, value in zip(overrides, updates.values()):
            assert same(parse_override(text)[1], value), (text, value)
    else:
        for dotted, value in updates.items():
            set_path(tree, dotted, value)
    child = tmp / "experiment.yaml"
    if place == "parent":
        (tmp / "base").mkdir()
        parent = tmp / "base" / "parent.yaml"
        parent.write_text(yaml.safe_dump(tree, sort_keys=False), "utf-8")
        child.write_text("extends: base/parent.yaml\n", "utf-8")
        return child, overrides, str(parent)
    child.write_text(yaml.safe_dump(tree, sort_keys=False), "utf-8")
    return child, overrides, (str(child) if place == "file" else "command line")


def run_config_case(capsys, updates: dict, dotted: str, place: str, command: list,
                    existing: str, *needles: str) -> str:
    with new_tmp() as name:
        tmp = Path(name).resolve()
        runs = prepare_runs(tmp, existing)
        before = snapshot(runs)
        child, overrides, source = write_config(tmp, updates, place)
        result = run_cli(capsys, "configs", [*command, "--config", child,
                                             f"run.storage_path={runs}", *overrides])
        # "<file>: <dotted>: ..." (an element or key of the field may follow the path)
        return check_clean("configs", result, runs, before, *needles,
                           pattern=rf"^culture-rl: error: {re.escape(source)}: "
                                   rf"{re.escape(dotted)}[.:]")


@settings(max_examples=250, **PROPERTY)
@given(fault=field_faults(), place=PLACES, command=COMMANDS, existing=EXISTING)
@example(fault=("deepspeed.zero_stage", 7), place="file", command=["sft"], existing="none")
@example(fault=("lora.dropout", 1.5), place="command line", command=["ppo"], existing="none")
@example(fault=("sft.epochs", math.inf), place="file", command=["sft"], existing="marker")
@example(fault=("ppo.rollout_batch_size", 0), place="parent", command=["eval"], existing="none")
def test_config_field_fault_names_file_and_field(capsys, fault, place, command, existing):
    dotted, value = fault
    run_config_case(capsys, {dotted: value}, dotted, place, command, existing)


@settings(max_examples=80, **PROPERTY)
@given(fault=unknown_keys(), place=PLACES, command=COMMANDS, existing=EXISTING)
def test_config_unknown_key_names_file_and_key(capsys, fault, place, command, existing):
    dotted, value = fault
    run_config_case(capsys, {dotted: value}, dotted, place, command, existing, "unknown key")


EVALUATIONS = ["associations", "lexical_norms", "wvs", "high_tension", "value_classification",
               "ranking"]


@st.composite
def impossible_combinations(draw) -> tuple[dict, str, list[str]]:
    """Values each fine alone, impossible together: (updates, the field named, needles)."""
    kind = draw(st.sampled_from(["mini_batch", "grpo", "heads", "offload_params",
                                 "offload_optimizer", "k_values", "tension_pair", "evaluations",
                                 "sweep_twice", "sweep_range", "sweep_samples", "sweep_mode",
                                 "sweep_max_t"]))
    if kind == "mini_batch":  # more samples per optimizer step than one PPO step has
        prompts, per_prompt = draw(st.integers(1, 64)), draw(st.integers(1, 8))
        mini = prompts * per_prompt + draw(st.integers(1, 64))
        return ({"ppo.rollout_batch_size": prompts, "ppo.samples_per_prompt": per_prompt,
                 "ppo.mini_batch_size": mini, "ppo.micro_batch_size": 1},
                "ppo.mini_batch_size", [f"mini_batch_size {mini}", f"({prompts * per_prompt} ="])
    if kind == "grpo":
        prompts = draw(st.integers(1, 64))
        return ({"ppo.advantage_estimator": "grpo", "ppo.samples_per_prompt": 1,
                 "ppo.rollout_batch_size": prompts,
                 "ppo.mini_batch_size": draw(st.integers(1, prompts)),
                 "ppo.micro_batch_size": 1}, "ppo.samples_per_prompt", ["grpo"])
    if kind == "heads":
        heads = draw(st.integers(2, 64))
        width = draw(st.integers(1, 256).filter(lambda w: w % heads))
        return ({"model.tiny.hidden_size": width, "model.tiny.num_heads": heads},
                "model.tiny.num_heads", [f"hidden_size {width}", f"num_heads {heads}"])
    if kind == "offload_params":
        stage = draw(st.integers(0, 2))
        return ({"deepspeed.offload_params": True, "deepspeed.offload_optimizer": False,
                 "deepspeed.zero_stage": stage}, "deepspeed.offload_params",
                [f"zero_stage {stage}"])
    if kind == "offload_optimizer":
        return ({"deepspeed.offload_optimizer": True, "deepspeed.offload_params": False,
                 "deepspeed.zero_stage": 0}, "deepspeed.offload_optimizer", ["zero_stage"])
    if kind == "k_values":
        ks = draw(st.lists(st.integers(-5, 20), min_size=1, max_size=5).filter(
            lambda ks: min(ks) < 1))
        return {"eval.k_values": ks}, "eval.k_values", [">= 1"]
    if kind == "tension_pair":
        culture = draw(st.sampled_from(["Avalor", "Borenia", "Calyxa"]))
        pair = draw(st.sampled_from([[culture], [culture, culture],
                                     [culture, "Borenia", "Avalor"]]))
        return {"eval.tension_pair": pair}, "eval.tension_pair", ["two different cultures"]
    if kind == "evaluations":
        names = draw(st.lists(st.sampled_from(EVALUATIONS), min_size=1, max_size=3))
        twice = names + [draw(st.sampled_from(names))]
        return {"eval.evaluations": twice}, "eval.evaluations", ["twice"]
    if kind == "sweep_twice":
        field = draw(st.sampled_from(["lora_r", "lora_alpha", "epochs"]))
        value = draw(st.integers(1, 64))
        return {f"sweep.{field}": [value, value]}, f"sweep.{field}", ["twice"]
    if kind == "sweep_range":
        low = draw(st.sampled_from([1e-5, 1e-4, 3e-4, 1e-3]))
        rates = draw(st.sampled_from([[low], [low * 10, low], [low, low * 2, low * 4]]))
        return ({"sweep.search": "random", "sweep.learning_rate": rates},
                "sweep.learning_rate", ["[low, high]"])
    if kind == "sweep_samples":
        return ({"sweep.search": "grid", "sweep.num_samples": draw(st.integers(2, 9))},
                "sweep.num_samples", ["grid"])
    if kind == "sweep_mode":
        return ({"sweep.metric": "eval_loss", "sweep.mode": "max"}, "sweep.mode", ["'min'"])
    grace = draw(st.integers(2, 10))
    max_t = draw(st.integers(1, grace - 1))
    return ({"sweep.grace_period": grace, "sweep.max_t": max_t}, "sweep.max_t",
            [f"max_t {max_t}", f"grace_period {grace}"])


@settings(max_examples=120, **PROPERTY)
@given(case=impossible_combinations(), place=PLACES, command=COMMANDS, existing=EXISTING)
def test_config_impossible_combination_names_the_field(capsys, case, place, command, existing):
    updates, dotted, needles = case
    run_config_case(capsys, updates, dotted, place, command, existing, *needles)


@settings(max_examples=8, **PROPERTY)
@given(prompts=st.integers(1, 16), per_prompt=st.integers(1, 4), trainers=st.integers(1, 3),
       data=st.data())
def test_ppo_batch_plan_that_does_not_divide_fails_before_writing(capsys, world_run, prompts,
                                                                 per_prompt, trainers, data):
    """Checked by `culture-rl ppo` (not by the schema) before the data is loaded: the run
    folder keeps what it held, also when it already holds the world of an earlier call."""
    samples = prompts * per_prompt
    mini = data.draw(st.integers(1, samples))
    micro = data.draw(st.integers(1, mini))
    if samples % mini == 0 and mini % (micro * trainers) == 0:
        micro, trainers = mini + 1, 1  # force the second check: micro x ranks must divide mini
    existing = data.draw(st.sampled_from(["none", "marker", "world"]))
    with new_tmp() as name:
        tmp = Path(name).resolve()
        runs = prepare_runs(tmp, existing, world_run)
        before = snapshot(runs)
        result = run_cli(capsys, "configs", [
            "ppo", "--config", QUICKSTART, f"run.storage_path={runs}",
            f"ppo.rollout_batch_size={prompts}", f"ppo.samples_per_prompt={per_prompt}",
            f"ppo.mini_batch_size={mini}", f"ppo.micro_batch_size={micro}",
            f"ppo_resources.trainer_workers={trainers}"])
        check_clean("configs", result, runs, before, "ppo.mini_batch_size", "not a multiple")


YAML_BREAKS = {  # a line that breaks YAML where it is inserted, and whether the error is there
    "tab": ("\tstray: 1", True), "mapping": ("bad: a: b", True),
    "nested mapping": ("  bad: a: b", True), "flow": ("open: [1, 2", False),
    "quote": ('open: "never closed', False),
}


@st.composite
def config_structure_faults(draw) -> tuple[dict, tuple[str, ...]]:
    """(files to write, relative -> text or bytes; what the error names) for faults in the
    shape of a config file rather than in one field."""
    text = yaml.safe_dump(BASE, sort_keys=False)
    kind = draw(st.sampled_from(["syntax", "duplicate", "not a mapping", "not UTF-8",
                                 "extends missing", "extends folder", "extends not a path",
                                 "extends cycle", "extends broken", "extends not a mapping"]))
    if kind == "syntax":
        lines = text.splitlines()
        at = draw(st.integers(0, len(lines)))
        line, exact = YAML_BREAKS[draw(st.sampled_from(sorted(YAML_BREAKS)))]
        broken = "\n".join(lines[:at] + [line] + lines[at:]) + "\n"
        where = f"line {at + 1}:" if exact else "line "
        return {"experiment.yaml": broken}, ("invalid YAML", where)
    if kind == "duplicate":  # a second copy of a section: PyYAML alone keeps it silently
        section = draw(st.sampled_from(sorted(BASE)))
        again = yaml.safe_dump({section: BASE[section]}, sort_keys=False)
        return ({"experiment.yaml": text + again},
                ("duplicate key", f"line {len(text.splitlines()) + 1}:"))
    if kind == "not a mapping":
        top = draw(st.one_of(st.lists(WORD, min_size=1, max_size=3), st.integers(), WORD,
                             st.booleans(), st.floats(allow_nan=False)))
        return {"experiment.yaml": yaml.safe_dump(top)}, ("top level must be a mapping",)
    if kind == "not UTF-8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc"]))
        return {"experiment.yaml": text.encode() + b"# " + bad + b"\n"}, ("not UTF-8",)
    if kind == "extends missing":
        missing = draw(NAME) + ".yaml"
        return ({"experiment.yaml": f"extends: {missing}\n" + text},
                ("@" + missing, "config file not found"))
    if kind == "extends folder":
        return {"experiment.yaml": "extends: .\n" + text}, ("@", "config file not found")
    if kind == "extends not a path":
        value = draw(st.one_of(st.lists(WORD, min_size=1, max_size=2), st.integers(),
                               st.booleans(), st.dictionaries(WORD, WORD, min_size=1)))
        tree = {"extends": value, **BASE}
        return ({"experiment.yaml": yaml.safe_dump(tree, sort_keys=False)},
                ("extends: must be a path",))
    if kind == "extends cycle":
        via = draw(st.sampled_from(["itself", "a parent"]))
        if via == "itself":
            return {"experiment.yaml": "extends: experiment.yaml\n" + text}, ("cycle",)
        return ({"experiment.yaml": "extends: parent.yaml\n" + text,
                 "parent.yaml": "extends: experiment.yaml\n"}, ("cycle",))
    if kind == "extends broken":  # the parent file has the syntax error: the parent is named
        lines = text.splitlines()
        at = draw(st.integers(0, len(lines)))
        broken = "\n".join(lines[:at] + ["bad: a: b"] + lines[at:]) + "\n"
        return ({"experiment.yaml": "extends: parent.yaml\n", "parent.yaml": broken},
                ("%parent.yaml", f"line {at + 1}:", "invalid YAML"))
    top = draw(st.one_of(st.lists(WORD, min_size=1, max_size=3), st.integers(), WORD))
    return ({"experiment.yaml": "extends: parent.yaml\n", "parent.yaml": yaml.safe_dump(top)},
            ("%parent.yaml", "top level must be a mapping"))


@settings(max_examples=120, **PROPERTY)
@given(case=config_structure_faults(), command=COMMANDS, existing=EXISTING)
def test_config_file_structure_faults_name_the_file(capsys, case, command, existing):
    files, needles = case
    with new_tmp() as name:
        tmp = Path(name).resolve()
        runs = prepare_runs(tmp, existing)
        before = snapshot(runs)
        for relative, content in files.items():
            data = content if isinstance(content, bytes) else content.encode("utf-8")
            (tmp / relative).write_bytes(data)
        child = tmp / "experiment.yaml"
        # "@x": the error names <tmp>/x (or the folder itself); "%x": names <tmp>/x, not the child
        expanded = []
        for needle in needles:
            if needle.startswith("@"):
                expanded.append(str(tmp / needle[1:]).rstrip("/") + ":")
            elif needle.startswith("%"):
                expanded.append(f"{tmp / needle[1:]}:")
            else:
                expanded.append(needle)
        if not any(n.startswith(("@", "%")) for n in needles):
            expanded.append(f"{child}:")
        result = run_cli(capsys, "configs", [*command, "--config", child,
                                             f"run.storage_path={runs}"])
        check_clean("configs", result, runs, before, *expanded)


# -------------------------------------------------------------------- resource plans


@st.composite
def plans_that_cannot_fit(draw):
    from culture_rl.distributed.cluster import Role, plan_totals

    names = draw(st.lists(NAME, min_size=1, max_size=4, unique=True))
    roles = []
    for i, role_name in enumerate(names):
        colocated = names[0] if i and draw(st.booleans()) else None
        roles.append(Role(role_name, draw(st.integers(1, 8)),
                          draw(st.integers(0, 16)) / 4, draw(st.integers(0, 4)) / 2, colocated))
    totals = plan_totals(roles)
    short = draw(st.sampled_from([r for r in ("GPU", "CPU") if totals[r] > 0] or ["CPU"]))
    if totals[short] == 0:  # nothing asks for anything: make the first role ask for a CPU
        roles[0] = Role(roles[0].name, roles[0].count, 1.0, roles[0].gpus, None)
        totals = plan_totals(roles)
    available = {r: totals[r] + draw(st.integers(0, 8)) / 4 for r in ("GPU", "CPU")}
    available[short] = draw(st.integers(0, max(0, math.ceil(totals[short] * 4) - 1))) / 4
    return roles, available


@settings(max_examples=100, **PROPERTY)
@given(plan=plans_that_cannot_fit(), section=st.sampled_from(["ppo_resources", "eval"]))
def test_plan_that_cannot_fit_is_a_resource_error_with_the_numbers(plan, section):
    from culture_rl.distributed.cluster import check_plan, plan_totals

    roles, available = plan
    counter.tried("resource plans")
    totals = plan_totals(roles)
    with pytest.raises(ResourceError) as raised:
        check_plan(roles, available, section=section)
    message = str(raised.value)
    # GPUs are checked first: the first resource short is the one named, with both numbers.
    short = next(r for r in ("GPU", "CPU") if totals[r] > available[r] + 1e-9)
    assert message.startswith(f"{section}: the plan needs {totals[short]:g} {short}s"), message
    assert f"the cluster has {available[short]:g}" in message and "\n" not in message, message
    check_plan(roles, available, autoscaling=True, section=section)  # on demand: not checked
    counter.clean("resource plans")


@settings(max_examples=50, **PROPERTY)
@given(workers=st.integers(1, 8), cpus=st.integers(1, 16), driver=st.integers(1, 8),
       use_gpu=st.booleans(), data=st.data())
def test_sweep_trial_bigger_than_the_cluster_is_a_resource_error(workers, cpus, driver,
                                                                  use_gpu, data):
    from culture_rl.config import ResourcesConfig, SweepConfig
    from culture_rl.tune.plan import max_concurrent

    resources = ResourcesConfig(num_workers=workers, cpus_per_worker=cpus / 4, use_gpu=use_gpu)
    sweep = SweepConfig(trial_driver_cpus=driver / 4)
    need_cpu = workers * cpus / 4 + driver / 4
    cluster = {"CPU": data.draw(st.integers(0, math.ceil(need_cpu * 4) - 1)) / 4,
               "GPU": float(workers if use_gpu else 0)}
    if use_gpu and data.draw(st.booleans()):  # short of GPUs instead
        cluster = {"CPU": need_cpu + 1, "GPU": float(data.draw(st.integers(0, workers - 1)))}
    trials = data.draw(st.integers(1, 20))
    counter.tried("resource plans")
    with pytest.raises(ResourceError) as raised:
        max_concurrent(sweep, resources, cluster, num_trials=trials)
    message = str(raised.value)
    assert f"{need_cpu:g} CPU" in message and f"{cluster['CPU']:g} CPU" in message, message
    assert f"resources.num_workers {workers}" in message and "\n" not in message, message
    counter.clean("resource plans")


# ----------------------------------------------------------------------- 2. data files

BOM = b"\xef\xbb\xbf"
BAD_UTF8 = st.sampled_from([b"\xff", b"\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xed\xa0\x80",
                            b"\xe2\x82", b"\xf0\x28\x8c\xbc", b"\x80"])
EMPTY_FILES = st.sampled_from([b"", b"\n", b"\n\n", b"\r\n", b"\t\n", b"   ", BOM, BOM + b"\n"])
EMPTY = st.sampled_from(["", " ", "   "])
CULTURES = ["Avalor", "Borenia", "Calyxa", "Dunmore"]


class Fault(typing.NamedTuple):
    """A generated data file: its bytes, the physical line the error must name (None: the file
    as a whole), words the message must hold, and the file name's suffix."""

    content: bytes
    line: int | None
    needles: tuple[str, ...]
    suffix: str = ".csv"


def empty_file(suffix: str) -> st.SearchStrategy:
    return EMPTY_FILES.map(lambda content: Fault(content, 1, ("empty file",), suffix))


@st.composite
def layout(draw, records: list[bytes], header: bool = True,
           blanks=st.just(b"")) -> tuple[bytes, list[int]]:
    """Join records into a file with random blank lines between them (none before a header),
    LF or CRLF line ends and maybe a BOM; return the bytes and each record's physical line."""
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    lines: list[bytes] = []
    numbers = []
    for i, record in enumerate(records):
        if i or not header:
            lines += draw(st.lists(blanks, max_size=2))
        numbers.append(len(lines) + 1)
        lines.append(record)
    lines += draw(st.lists(blanks, max_size=2))
    bom = BOM if draw(st.booleans()) else b""
    return bom + newline.join(lines) + newline, numbers


@st.composite
def table_fault(draw, columns: list[str], required: list[str], cell: dict, value_faults: dict,
                unique: str | None = None) -> Fault:
    """A CSV or TSV file of valid rows (``cell``: column -> strategy of valid values) with one
    fault; ``value_faults``: name -> (columns it may hit, strategy of bad values, needle)."""
    delimiter = draw(st.sampled_from([",", "\t"]))
    suffix = ".tsv" if delimiter == "\t" and draw(st.booleans()) else ".csv"
    kind = draw(st.sampled_from(["missing column", "ragged", "not UTF-8", "unclosed quote",
                                 "empty file", "header only", *sorted(value_faults)]))
    if kind == "empty file":
        return draw(empty_file(suffix))
    columns = list(draw(st.permutations(columns)))
    rows = draw(st.lists(st.fixed_dictionaries({c: cell[c] for c in columns}), min_size=1,
                         max_size=6, unique_by=(lambda r: r[unique].lower()) if unique else None))
    header = [c.encode() for c in columns]
    cells = [[row[c].encode() for c in columns] for row in rows]
    at = draw(st.integers(0, len(rows) - 1))
    record = at + 1  # the record the error is on (0: the header)
    if kind == "missing column":
        gone = columns.index(draw(st.sampled_from(required)))
        for fields in [header, *cells]:
            fields.pop(gone)
        record, needle = 0, "missing column"
    elif kind == "header only":
        cells, record, needle = [], 0, "only a header"
    elif kind == "ragged":
        if draw(st.booleans()):
            cells[at].pop(draw(st.integers(0, len(columns) - 1)))
        else:
            cells[at].insert(draw(st.integers(0, len(columns))), draw(WORD).encode())
        needle = "fields but the header has"
    elif kind == "not UTF-8":
        fields = header if draw(st.integers(0, 3)) == 0 else cells[at]
        record = 0 if fields is header else record
        column = draw(st.integers(0, len(columns) - 1))
        fields[column] += draw(BAD_UTF8) + draw(WORD).encode()
        needle = "invalid UTF-8"
    elif kind == "unclosed quote":  # no other field holds a quote: it runs to the end
        column = draw(st.integers(0, len(columns) - 1))
        cells[at][column] = b'"' + cells[at][column]
        needle = "never closed"
    else:
        hit, bad, needle = value_faults[kind]
        cells[at][columns.index(draw(st.sampled_from(hit)))] = draw(bad).encode()
    glue = delimiter.encode()
    content, numbers = draw(layout([glue.join(header), *(glue.join(f) for f in cells)]))
    return Fault(content, numbers[record], (needle,), suffix)


COUNT = st.integers(1, 99).map(str)
RESPONSE = st.one_of(WORD, st.sampled_from(["#Missing", "#Unknown", "NA", ""]))
BAD_FREQ = st.one_of(WORD, st.sampled_from(["", "  ", "nan", "inf", "-inf", "1e400", "3x",
                                            "0x10", "--1", "1_0_"]),
                     st.integers(1, 999).map(lambda i: f"-{i}"),
                     st.integers(0, 99).map(lambda i: f"{i}.5"))


@st.composite
def swow_faults(draw) -> Fault:
    if draw(st.booleans()):  # the raw per-participant form
        columns = ["participantID", "cue", "R1", "R2", "R3"]
        cells = {"participantID": st.integers(1, 9999).map(str), "cue": WORD,
                 "R1": RESPONSE, "R2": RESPONSE, "R3": RESPONSE}
        return draw(table_fault(columns, ["cue", "R1", "R2", "R3"], cells,
                                {"empty cue": (["cue"], EMPTY, "empty cue")}))
    response = draw(st.sampled_from(["response", "association"]))
    columns = ["cue", response, "freq"]
    cells = {"cue": WORD, response: WORD, "freq": COUNT}
    return draw(table_fault(columns, columns, cells,
                            {"bad freq": (["freq"], BAD_FREQ, "freq"),
                             "empty cue": (["cue"], EMPTY, "empty cue")}))


def scale(low: float, high: float) -> st.SearchStrategy:
    return st.integers(int(low * 100), int(high * 100)).map(lambda v: f"{v / 100:.2f}")


def out_of_scale(low: float, high: float) -> st.SearchStrategy:
    return st.one_of(st.integers(1, 400).map(lambda k: f"{low - k / 100:.2f}"),
                     st.integers(1, 400).map(lambda k: f"{high + k / 100:.2f}"),
                     st.sampled_from(["1e9", "-1e9", "nan", "inf", "-inf", "0", "-0.5"]))


NOT_A_NUMBER = st.one_of(WORD, st.sampled_from(["", " ", "5;5", "~3", "n/a", "3 4", "1..2"]))


@st.composite
def lexicon_faults(draw) -> tuple[str, Fault]:
    kind = draw(st.sampled_from(["warriner", "brysbaert"]))
    if kind == "warriner":
        ratings = ["V.Mean.Sum", "A.Mean.Sum", "D.Mean.Sum"]
        extra = draw(st.lists(st.sampled_from(["V.SD.Sum", "A.SD.Sum", "Freq"]), unique=True))
        columns, low, high = ["Word", *ratings, *extra], 1.0, 9.0
    else:
        ratings, columns = ["Conc.M"], ["Word", "Bigram", "Conc.M", "Conc.SD"]
        low, high = 1.0, 5.0
    cells = {c: scale(low, high) for c in columns}
    cells["Word"] = WORD
    # Words unique up to case: a duplicate is a warning, which would be a second stderr line.
    return kind, draw(table_fault(columns, ["Word", *ratings], cells, {
        "out of scale": (ratings, out_of_scale(low, high), "outside the scale"),
        "not a number": (ratings, NOT_A_NUMBER, "must be a number"),
        "empty word": (["Word"], EMPTY, "empty word")}, unique="Word"))


def survey_question(draw, i: int) -> dict:
    options = draw(st.lists(WORD, min_size=2, max_size=5))
    cultures = draw(st.lists(st.sampled_from(CULTURES), min_size=1, max_size=3, unique=True))
    shares = st.lists(st.integers(0, 100), min_size=len(options),
                      max_size=len(options)).filter(sum)
    return {"id": f"q{i}", "question": draw(WORD) + "?", "options": options,
            "distributions": {c: [v / 100 for v in draw(shares)] for c in cultures}}


def break_distribution(draw, question: dict) -> tuple[object, str]:
    """The question's distributions made unusable in one way: (new value, needle)."""
    dists = dict(question["distributions"])
    culture = draw(st.sampled_from(sorted(dists)))
    values = list(dists[culture])
    spot = draw(st.integers(0, len(values) - 1))
    how = draw(st.sampled_from(["length", "negative", "not finite", "not a number", "zero",
                                "too large", "not a list", "culture name", "not a mapping"]))
    if how == "length":
        values, needle = (values + [0.1] if draw(st.booleans()) else values[:-1],
                          "probabilities but the question has")
    elif how == "negative":
        values[spot], needle = -draw(st.integers(1, 100)) / 100, ">= 0"
    elif how == "not finite":
        values[spot], needle = draw(st.sampled_from([math.nan, math.inf, -math.inf])), "finite"
    elif how == "not a number":
        values[spot] = draw(st.sampled_from(["x", True, None, [0.5], {"a": 1}]))
        needle = "must be numbers"
    elif how == "zero":
        values, needle = [0] * len(values), "sum to 0"
    elif how == "too large":  # each finite, their sum not
        values, needle = [1e308] * len(values), "too large"
    elif how == "not a list":
        values, needle = draw(st.sampled_from([0.5, "0.5, 0.5", {"a": 0.5}])), "list"
    elif how == "culture name":
        return {draw(EMPTY): values, **dists}, "culture name"
    else:
        return draw(st.sampled_from([[], {}, "Avalor", [0.5, 0.5], None])), "mapping"
    dists[culture] = values
    return dists, needle


@st.composite
def survey_jsonl_faults(draw) -> Fault:
    questions = [survey_question(draw, i) for i in range(draw(st.integers(1, 5)))]
    kind = draw(st.sampled_from(["distribution", "missing key", "options", "duplicate id",
                                 "id", "question", "invalid JSON", "not an object",
                                 "not UTF-8", "too deep", "empty file"]))
    if kind == "empty file":
        return draw(empty_file(".jsonl"))
    records = [json.dumps(q).encode() for q in questions]
    at = draw(st.integers(0, len(questions) - 1))
    q = dict(questions[at])
    text = records[at]
    if kind == "distribution":
        q["distributions"], needle = break_distribution(draw, q)
    elif kind == "missing key":
        key = draw(st.sampled_from(["id", "question", "options", "distributions"]))
        del q[key]
        needle = f"missing key {key!r}"
    elif kind == "options":
        q["options"] = draw(st.sampled_from(["yes/no", [1, 2], q["options"][:1], [], None,
                                             {"a": 1}]))
        needle = "options"
    elif kind == "duplicate id":  # an earlier question's id, or the same question twice
        if at:
            q["id"] = questions[draw(st.integers(0, at - 1))]["id"]
        else:
            records.insert(1, text)
            at = 1
        needle = "duplicate id"
    elif kind == "id":
        q["id"], needle = draw(st.sampled_from(["", "  ", True, 1.5, [1], None, {"a": 1}])), "id"
    elif kind == "question":
        q["question"], needle = draw(st.sampled_from(["", " ", 3, None, ["q"]])), "question"
    records[at] = json.dumps(q).encode()
    if kind == "invalid JSON":
        records[at] = draw(st.sampled_from([text[:draw(st.integers(1, len(text) - 1))],
                                            text.replace(b'"', b"'"), text + b",", b"{" + text,
                                            b"{'id': 1}", b"question?"]))
        needle = "invalid JSON"
    elif kind == "not an object":
        records[at] = json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=3),
                                                st.integers(), WORD, st.booleans(),
                                                st.none()))).encode()
        needle = "expected a JSON object"
    elif kind == "too deep":
        depth = draw(st.integers(5000, 20000))
        records[at], needle = b"[" * depth + b"]" * depth, "nested too deeply"
    elif kind == "not UTF-8":
        cut = draw(st.integers(1, len(text) - 1))
        records[at], needle = text[:cut] + draw(BAD_UTF8) + text[cut:], "invalid UTF-8"
    content, numbers = draw(layout(records, header=False,
                                   blanks=st.sampled_from([b"", b" ", b"\t"])))
    return Fault(content, numbers[at], (needle,), ".jsonl")


_OWN = object()  # goqa_row's default: the question's own distributions (None is a fault)


def goqa_row(question: dict, distributions=_OWN) -> dict:
    selections = {c: list(v) for c, v in question["distributions"].items()}
    selections = selections if distributions is _OWN else distributions
    return {"question": question["question"],
            "selections": f"defaultdict(<class 'list'>, {selections!r})",
            "options": repr(list(question["options"])), "source": "WVS"}


@st.composite
def survey_csv_faults(draw) -> Fault:
    """GlobalOpinionQA rows: selections and options are Python-literal text."""
    delimiter = draw(st.sampled_from([",", "\t"]))
    suffix = ".tsv" if delimiter == "\t" and draw(st.booleans()) else ".csv"
    kind = draw(st.sampled_from(["missing column", "ragged", "distribution", "not a literal",
                                 "options", "not UTF-8", "header only", "empty file"]))
    if kind == "empty file":
        return draw(empty_file(suffix))
    rows = [goqa_row(survey_question(draw, i)) for i in range(draw(st.integers(1, 5)))]
    header = list(draw(st.permutations(["question", "selections", "options", "source"])))
    at = draw(st.integers(0, len(rows) - 1))
    record = at + 1
    if kind == "missing column":
        header.remove(draw(st.sampled_from(header)))
        record, needle = 0, "missing column"
    elif kind == "header only":
        rows, record, needle = [], None, "no questions"
    elif kind == "distribution":
        question = survey_question(draw, at)
        broken, needle = break_distribution(draw, question)
        rows[at] = goqa_row(question, broken)
        if re.search(r"\b(nan|inf)\b", rows[at]["selections"]):
            needle = "not a plain Python literal"  # repr(nan) is a name, not a literal
    elif kind == "not a literal":
        rows[at]["selections"] = draw(st.sampled_from([
            "{'Avalor': [0.5, ", "__import__('os').system('true')", "open('x').read()",
            "defaultdict(<class 'list'>, {'Avalor': [0.5,)", "{'Avalor': [0.5 0.5]}"]))
        needle = "not a plain Python literal"
    elif kind == "options":
        rows[at]["options"], needle = draw(st.sampled_from([
            ("'yes/no'", "options"), ("[1, 2]", "options"), ("['only']", "2 options"),
            ("['a', ", "not a plain Python literal"), ("{'a', 'b'}", "options")]))

    def encode(fields: list[str]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=delimiter, lineterminator="").writerow(fields)
        return buffer.getvalue().encode()

    records = [encode(header)] + [encode([row[c] for c in header]) for row in rows]
    if kind == "ragged":
        fields = [rows[at][c] for c in header]
        records[record] = encode(fields[:-1] if draw(st.booleans()) else fields + ["extra"])
        needle = "fields but the header has"
    elif kind == "not UTF-8":
        cut = draw(st.integers(0, len(records[record]) - 1))
        records[record] = records[record][:cut] + draw(BAD_UTF8) + records[record][cut:]
        needle = "invalid UTF-8"
    content, numbers = draw(layout(records))
    return Fault(content, None if record is None else numbers[record], (needle,), suffix)


@st.composite
def statements_faults(draw) -> Fault:
    labels = draw(st.lists(WORD, min_size=2, max_size=4, unique=True))
    rows = [{"text": f"{draw(WORD)} {draw(WORD)}", "label": labels[i % len(labels)]}
            for i in range(draw(st.integers(2, 6)))]
    for row in rows:
        if draw(st.booleans()):
            row["culture"] = draw(st.sampled_from(CULTURES))
    kind = draw(st.sampled_from(["missing", "not a string", "culture", "id", "invalid JSON",
                                 "not an object", "not UTF-8", "empty file", "one label"]))
    if kind == "empty file":
        return draw(empty_file(".jsonl"))
    if kind == "one label":
        content, _ = draw(layout([json.dumps({**r, "label": labels[0]}).encode() for r in rows],
                                 header=False))
        return Fault(content, None, ("two different labels",), ".jsonl")
    records = [json.dumps(r).encode() for r in rows]
    at = draw(st.integers(0, len(rows) - 1))
    row, text = dict(rows[at]), records[at]
    if kind == "missing":
        key = draw(st.sampled_from(["text", "label"]))
        del row[key]
        needle = f"missing key {key!r}"
    elif kind == "not a string":
        key = draw(st.sampled_from(["text", "label"]))
        row[key] = draw(st.sampled_from([3, 1.5, None, True, ["a"], {"a": "b"}, "", "  "]))
        needle = f"{key} must be a non-empty string"
    elif kind == "culture":
        row["culture"], needle = draw(st.sampled_from([1, True, ["Avalor"], {"a": 1}])), "culture"
    elif kind == "id":
        row["id"], needle = draw(st.sampled_from([[1], {"a": 1}, True, "", " "])), "id must be"
    records[at] = json.dumps(row).encode()
    if kind == "invalid JSON":
        records[at] = draw(st.sampled_from([text[:draw(st.integers(1, len(text) - 1))],
                                            text.replace(b'"', b"'"), text + b"}"]))
        needle = "invalid JSON"
    elif kind == "not an object":
        records[at] = json.dumps(draw(st.one_of(st.lists(WORD, max_size=2), st.integers(),
                                                WORD, st.none()))).encode()
        needle = "expected a JSON object"
    elif kind == "not UTF-8":
        cut = draw(st.integers(1, len(text) - 1))
        records[at], needle = text[:cut] + draw(BAD_UTF8) + text[cut:], "invalid UTF-8"
    content, numbers = draw(layout(records, header=False, blanks=st.sampled_from([b"", b"  "])))
    return Fault(content, numbers[at], (needle,), ".jsonl")


def write_valid_norms(tmp: Path) -> dict[str, Path]:
    """A small valid SWOW file and survey, for cases whose fault is in another file."""
    swow = tmp / "good_swow.csv"
    swow.write_text("cue,response,freq\n" + "".join(
        f"{cue},{response},{n}\n" for cue in ("sun", "sea", "tree", "road") for n, response in
        enumerate(("warm", "light", "day", "sky", "bright"), 1)), "utf-8")
    survey = tmp / "good_survey.jsonl"
    survey.write_text(json.dumps({"id": "q1", "question": "Family matters?",
                                  "options": ["yes", "no"],
                                  "distributions": {"Borenia": [0.7, 0.3],
                                                    "Avalor": [0.4, 0.6]}}) + "\n", "utf-8")
    return {"swow": swow, "survey": survey}


def run_data_case(capsys, runs: Path, path: Path, fault: Fault, argv: list) -> str:
    """Write the fault to ``path``, run, and require "<path>, line N" (or "<path>: ")."""
    before = snapshot(runs)
    path.write_bytes(fault.content)
    where = (rf"{re.escape(str(path))}: " if fault.line is None
             else rf"{re.escape(str(path))}, line {fault.line}[,:]")
    result = run_cli(capsys, "data files", argv)
    return check_clean("data files", result, runs, before, *fault.needles, pattern=where)


def command_argv(command: str, runs: Path, model_dir: str) -> list:
    argv = [command, "--config", QUICKSTART, f"run.storage_path={runs}"]
    return argv + (["--model", model_dir] if command == "eval" else [])


DATA_COMMANDS = st.sampled_from(["sft", "ppo", "synth", "eval"])


@settings(max_examples=200, **PROPERTY)
@given(fault=swow_faults(), command=DATA_COMMANDS, with_survey=st.booleans(), existing=EXISTING)
def test_bad_swow_file_names_file_and_line(capsys, model_dir, fault, command, with_survey,
                                           existing):
    with new_tmp() as name:
        tmp = Path(name).resolve()
        runs = prepare_runs(tmp, existing)
        good = write_valid_norms(tmp)
        path = tmp / f"swow{fault.suffix}"
        argv = command_argv(command, runs, model_dir) + [f"data.swow_path={path}"]
        argv += [f"data.survey_path={good['survey']}"] if with_survey else []
        run_data_case(capsys, runs, path, fault, argv)


@settings(max_examples=200, **PROPERTY)
@given(fault=st.one_of(survey_jsonl_faults(), survey_csv_faults()), command=DATA_COMMANDS,
       with_swow=st.booleans(), existing=EXISTING)
def test_bad_survey_file_names_file_and_line(capsys, model_dir, fault, command, with_swow,
                                             existing):
    with new_tmp() as name:
        tmp = Path(name).resolve()
        runs = prepare_runs(tmp, existing)
        good = write_valid_norms(tmp)
        path = tmp / f"survey{fault.suffix}"
        argv = command_argv(command, runs, model_dir) + [f"data.survey_path={path}"]
        argv += [f"data.swow_path={good['swow']}"] if with_swow else []
        run_data_case(capsys, runs, path, fault, argv)


def run_lexicon_case(capsys, model_dir, world_run, case, world: bool, existing: str):
    kind, fault = case
    with new_tmp() as name:
        tmp = Path(name).resolve()
        runs = prepare_runs(tmp, existing, world_run)
        good = write_valid_norms(tmp)
        path = tmp / f"{kind}{fault.suffix}"
        argv = command_argv("eval", runs, model_dir) + [
            "eval.evaluations=[lexical_norms]", f"data.{kind}_path={path}"]
        if not world:
            argv += [f"data.swow_path={good['swow']}", f"data.survey_path={good['survey']}"]
        run_data_case(capsys, runs, path, fault, argv)


@settings(max_examples=120, **PROPERTY)
@given(case=lexicon_faults(), existing=EXISTING)
def test_bad_lexicon_names_file_and_line(capsys, model_dir, world_run, case, existing):
    run_lexicon_case(capsys, model_dir, world_run, case, False, existing)


@settings(max_examples=6, **PROPERTY)
@given(case=lexicon_faults(), existing=st.sampled_from(["none", "world"]))
def test_bad_lexicon_beside_the_synthetic_world(capsys, model_dir, world_run, case, existing):
    """Without data.swow_path / survey_path, `eval` writes a missing world before it reads the
    lexicons (~1 s a case): the run folder is new (and removed again) or holds the world an
    earlier call wrote, unchanged."""
    run_lexicon_case(capsys, model_dir, world_run, case, True, existing)


@settings(max_examples=120, **PROPERTY)
@given(fault=statements_faults(), existing=EXISTING)
def test_bad_statements_file_names_file_and_line(capsys, model_dir, fault, existing):
    with new_tmp() as name:
        tmp = Path(name).resolve()
        runs = prepare_runs(tmp, existing)
        good = write_valid_norms(tmp)
        path = tmp / "statements.jsonl"
        argv = command_argv("eval", runs, model_dir) + [
            "eval.evaluations=[value_classification]", f"data.statements_path={path}",
            f"data.swow_path={good['swow']}", f"data.survey_path={good['survey']}"]
        run_data_case(capsys, runs, path, fault, argv)


# ------------------------------------------------------------------------ 3. CLI arguments


def _option_strings(parser) -> set[str]:
    import argparse

    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def _choices(parser, *path: str) -> list[str]:
    """The words argparse accepts after ``culture-rl *path``: subcommands, or the choices of a
    positional. Read from the parser so that a new command is never drawn as "unknown" (a
    hand-kept list missed ``spa`` and a drawn 'spa' ran the real command)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if not path:
                return sorted(action.choices)
            return _choices(action.choices[path[0]], *path[1:])
        if not path and action.choices and not action.option_strings:
            return sorted(action.choices)
    raise AssertionError(f"no choices after {path}")


OPTIONS = _option_strings(build_parser())
TOP_COMMANDS = _choices(build_parser())
GROUP_CHOICES = {group: _choices(build_parser(), group) for group in ("config", "jobs", "submit")}
CONFIG_COMMANDS = [["sft"], ["ppo"], ["eval"], ["synth"], ["pretrain"], ["sweep"], ["demo"],
                   ["config", "show"]]
NEED_CONFIG = [["sft"], ["ppo"], ["eval"], ["synth"], ["pretrain"], ["sweep"],
               ["submit", "align_sft"], ["submit", "eval"]]
# A made-up flag argparse cannot take for an abbreviation of a real one.
FLAG = st.builds(lambda dashes, word: dashes + word, st.sampled_from(["--", "-"]),
                 st.text(string.ascii_lowercase + "-", min_size=1, max_size=10)).filter(
    lambda f: f.strip("-") and not any(o.startswith(f) for o in OPTIONS)
    and not f.startswith("-h"))  # -hx is -h with the value x (also exit 2, another message)


@st.composite
def cli_faults(draw) -> tuple[list[str], tuple[str, ...]]:
    """(argv after ``culture-rl``, with {config} and {runs} placeholders; needles)."""
    config = ["--config", "{config}", "run.storage_path={runs}"]
    kind = draw(st.sampled_from(["unknown flag", "unknown command", "unknown subcommand",
                                 "override without =", "unknown field", "missing --config",
                                 "flag without value", "no command"]))
    if kind == "unknown flag":
        flag = draw(FLAG) + draw(st.sampled_from(["", "=1", "=x"]))
        args = [*draw(st.sampled_from(CONFIG_COMMANDS)), *config]
        at = draw(st.sampled_from([1, len(args)])) if args[0] != "config" else len(args)
        return args[:at] + [flag] + args[at:], ("unrecognized arguments", flag)
    if kind == "unknown command":
        word = draw(NAME.filter(lambda w: w not in TOP_COMMANDS))
        return [word, *config], ("invalid choice", repr(word))
    if kind == "unknown subcommand":
        group, choices = draw(st.sampled_from(sorted(GROUP_CHOICES.items())))
        word = draw(NAME.filter(lambda w: w not in choices))
        rest = config if group == "submit" else []
        return [group, word, *rest], (f"error: {group}: ", "invalid choice", repr(word))
    if kind == "override without =":
        text = draw(st.one_of(
            st.builds(lambda a, b: f"{a}.{b}", WORD, WORD), WORD,
            st.builds(lambda a, v: f"={a}" if v else f".{a}=1", WORD, st.booleans()),
            st.builds(lambda a, b: f"{a}..{b}=1", WORD, WORD),
            st.builds(lambda a: f"{a}.=1", WORD)))
        return ([*draw(st.sampled_from(CONFIG_COMMANDS)), *config, text],
                ("command line: ", f"override {text!r}"))
    if kind == "unknown field":
        prefix, model = draw(st.sampled_from(SECTIONS))
        name = draw(NAME.filter(lambda n: n not in model.model_fields and n != "extends"))
        dotted = f"{prefix}.{name}" if prefix else name
        value = draw(st.sampled_from(["1", "x", "[1, 2]", "", "{a: 1}"]))
        return ([*draw(st.sampled_from(CONFIG_COMMANDS)), *config, f"{dotted}={value}"],
                (f"command line: {dotted}: unknown key",))
    if kind == "missing --config":
        command = draw(st.sampled_from(NEED_CONFIG))
        extra = draw(st.lists(st.sampled_from(["sft.epochs=2", "run.storage_path={runs}"]),
                              max_size=2))
        return [*command, *extra], (f"error: {' '.join(command[:1])}: ", "required", "--config")
    if kind == "flag without value":
        args, flag = draw(st.sampled_from([
            (["sft", "--config"], "--config"), (["config", "show", "--config"], "--config"),
            (["eval", *config, "--model"], "--model"), (["eval", *config, "--label"], "--label"),
            (["submit", "align_sft", *config, "--timeout"], "--timeout"),
            (["submit", "align_sft", *config, "--timeout", "soon"], "--timeout"),
            (["report"], "run_dir"), (["jobs", "status"], "SUBMISSION_ID")]))
        return args, (flag,)
    return [], ("required", "command")


@settings(max_examples=200, **PROPERTY)
@given(case=cli_faults())
@example(case=(["sft", "--config", "{config}", "--no-such-flag"],
               ("unrecognized arguments", "--no-such-flag")))
@example(case=(["sft"], ("error: sft: ", "required", "--config")))
def test_bad_arguments_are_one_line_exit_2(capsys, case):
    argv, needles = case
    with new_tmp() as name:
        runs = Path(name).resolve() / "runs"
        argv = [a.replace("{config}", str(QUICKSTART)).replace("{runs}", str(runs))
                for a in argv]
        result = run_cli(capsys, "CLI", argv)
        check_clean("CLI", result, runs, None, *needles)
