"""CLI behaviour that needs no training: config commands and bad input (exit 2, one line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from culture_rl.cli import main

REPO = Path(__file__).resolve().parents[2]


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_config_show_resolves_overrides(capsys):
    code, out, _ = run_main(capsys, "config", "show", "--config",
                            str(REPO / "configs" / "quickstart.yaml"), "sft.learning_rate=5e-4")
    assert code == 0 and "learning_rate: 0.0005" in out and "zero_stage: 2" in out


def test_config_fields_lists_help(capsys):
    code, out, _ = run_main(capsys, "config", "fields")
    assert code == 0 and "deepspeed.zero_stage" in out and "ZeRO stage" in out


def test_bad_config_is_one_line_exit_2_and_leaves_no_run_dir(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"run:\n  storage_path: {tmp_path}/runs\nsft:\n  epochs: -1\n")
    code, _, err = run_main(capsys, "sft", "--config", str(bad))
    assert code == 2
    assert err.count("\n") == 1 and "sft.epochs" in err and str(bad) in err
    assert not (tmp_path / "runs").exists()


def test_bad_swow_file_names_the_line_and_leaves_no_run_dir(tmp_path, capsys):
    swow = tmp_path / "swow.csv"
    swow.write_text("cue,response,freq\ncat,dog,3\ncat,mouse,many\n", "utf-8")
    code, _, err = run_main(capsys, "sft", "--config", str(REPO / "configs" / "quickstart.yaml"),
                            f"run.storage_path={tmp_path}/runs", f"data.swow_path={swow}",
                            "model.path=/nonexistent/model")
    assert code == 2 and err.count("\n") == 1
    assert str(swow) in err and "line 3" in err
    assert not (tmp_path / "runs").exists()


def test_missing_model_is_a_config_error(tmp_path, capsys):
    code, _, err = run_main(capsys, "sft", "--config", str(REPO / "configs" / "quickstart.yaml"),
                            f"run.storage_path={tmp_path}/runs", "model.path=/no/such/model")
    assert code == 2 and "model.path" in err and "/no/such/model" in err
    assert not (tmp_path / "runs").exists()


def test_tiny_sft_without_pretrain_says_what_to_run(tmp_path, capsys):
    code, _, err = run_main(capsys, "sft", "--config", str(REPO / "configs" / "quickstart.yaml"),
                            f"run.storage_path={tmp_path}/runs")
    assert code == 2 and "culture-rl pretrain" in err


def test_console_script_bad_flag_exit_2():
    script = Path(sys.executable).with_name("culture-rl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "culture_rl.cli"]
    proc = subprocess.run(command + ["sft", "--no-such-flag"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "error" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_culture(tmp_path, capsys):
    code, _, err = run_main(capsys, "synth", "--config", str(REPO / "configs" / "quickstart.yaml"),
                            f"run.storage_path={tmp_path}/runs", "data.culture=Atlantis")
    assert code == 2 and "data.culture" in err and "Atlantis" in err


@pytest.mark.parametrize("override, field", [
    ("ppo.reward=spearmann", "ppo.reward"),
    ("ppo.advantage_estimator=vtrace", "ppo.advantage_estimator"),
    ("ppo.policy_path=/nowhere/sft/export", "ppo.policy_path"),
    ("ppo.mini_batch_size=48", "ppo.mini_batch_size"),
    ("ppo.samples_per_prompt=0", "ppo.samples_per_prompt"),
])
def test_bad_ppo_settings_fail_before_any_work(tmp_path, capsys, override, field):
    code, _, err = run_main(capsys, "ppo", "--config",
                            str(REPO / "configs" / "align_ppo_quickstart.yaml"),
                            f"run.storage_path={tmp_path}/runs", override)
    assert code == 2, err
    assert err.count("\n") == 1 and field in err
    assert not (tmp_path / "runs").exists()


def test_subcommand_argument_error_starts_like_every_error_line(capsys):
    # A subcommand's parser wrote "culture-rl sft: error: ...", which a grep for the
    # documented "culture-rl: error:" missed.
    with pytest.raises(SystemExit) as stop:
        main(["sft"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith("culture-rl: error: sft: the following arguments are required: "
                          "--config"), err


def _run_folder_with_notes(tmp_path) -> Path:
    folder = tmp_path / "runs" / "quickstart"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("an earlier run\n", "utf-8")
    return folder


@pytest.mark.parametrize("bad", ["survey", "swow", "culture"])
def test_bad_input_leaves_an_existing_run_folder_as_it_was(tmp_path, capsys, bad):
    # The synthetic world used to be written before the user's files and data.culture were
    # checked, so a bad one left a new world/ in a run folder that already held a run.
    folder = _run_folder_with_notes(tmp_path)
    path = tmp_path / ("survey.jsonl" if bad == "survey" else "swow.csv")
    path.write_text("[1, 2]\n" if bad == "survey" else "cue,response,freq\ndog,cat,many\n",
                    "utf-8")
    override = {"survey": f"data.survey_path={path}", "swow": f"data.swow_path={path}",
                "culture": "data.culture=Atlantis"}[bad]
    code, _, err = run_main(capsys, "sft", "--config", str(REPO / "configs" / "quickstart.yaml"),
                            f"run.storage_path={tmp_path}/runs", override)
    assert code == 2 and err.count("\n") == 1, err
    assert (f"{path}, line " in err) if bad != "culture" else ("data.culture" in err)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_ppo_batch_plan_fails_before_the_world_is_written(tmp_path, capsys):
    folder = _run_folder_with_notes(tmp_path)
    code, _, err = run_main(capsys, "ppo", "--config",
                            str(REPO / "configs" / "align_ppo_quickstart.yaml"),
                            f"run.storage_path={tmp_path}/runs", "ppo.mini_batch_size=48")
    assert code == 2 and "ppo.mini_batch_size" in err and "not a multiple" in err, err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_empty_data_path_is_the_synthetic_world_not_a_traceback(tmp_path, capsys):
    # `data.swow_path=""` with a survey file fell through to an assert: exit 1, a traceback,
    # and the run folder left behind. Empty now means unset, as the field's help says.
    survey = tmp_path / "survey.jsonl"
    survey.write_text('{"id": "q1", "question": "Q?", "options": ["a", "b"], '
                      '"distributions": {"Borenia": [0.5, 0.5]}}\n', "utf-8")
    code, _, err = run_main(capsys, "sft", "--config", str(REPO / "configs" / "quickstart.yaml"),
                            f"run.storage_path={tmp_path}/runs", 'data.swow_path=""',
                            f"data.survey_path={survey}")
    assert code == 2 and "culture-rl pretrain" in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("finished", [None, "pretrain/export/finished.json",
                                      "spa/questions/manifest.json"])
def test_a_late_config_error_keeps_the_stages_that_finished(tmp_path, capsys, monkeypatch,
                                                           finished):
    """A fault that shows only after a stage finished (CultureSPA's question stage finding no
    usable question after the base was pretrained) keeps the run folder; with nothing finished
    the folder this call made is removed as for any bad input."""
    import culture_rl.cli as cli
    from culture_rl.core.errors import ConfigError

    def run_then_fail(args, config):
        if finished:
            marker = config.run_dir / finished
            marker.parent.mkdir(parents=True)
            marker.write_text("{}")
        raise ConfigError("the model wrote no usable question", field="spa.questions_per_topic")

    monkeypatch.setattr(cli, "run_command", run_then_fail)
    code, _, err = run_main(capsys, "spa", "--config",
                            str(REPO / "configs" / "culturespa_quickstart.yaml"),
                            f"run.storage_path={tmp_path}/runs")
    assert code == 2 and err.count("\n") == 1 and "spa.questions_per_topic" in err
    if finished:
        assert (tmp_path / "runs" / "culturespa" / finished).is_file() and "kept" in err
    else:
        assert not (tmp_path / "runs").exists() and "kept" not in err


def test_every_method_keeps_the_plan_run_summary_protocol():
    """The table's methods all go through run_method: each names a module with plan(config),
    run(plan) and summary(result), and each operation has its own runner instead."""
    import importlib
    import inspect

    from culture_rl.commands import COMMANDS, JOBS

    methods = {name: c.method for name, c in COMMANDS.items() if c.method}
    assert set(methods) == {"pretrain", "sft", "ppo", "calm", "reflect", "dpo", "spa"}
    for name, module_name in methods.items():
        module = importlib.import_module(module_name)
        for function, parameters in (("plan", 1), ("run", 1), ("summary", 1)):
            assert callable(getattr(module, function, None)), (name, function)
            assert len(inspect.signature(getattr(module, function)).parameters) == parameters
        assert COMMANDS[name].runner is None, name  # one path: no method has a runner too
    assert all(c.runner for c in COMMANDS.values() if not c.method)
    assert len(JOBS) == len({c.job for c in COMMANDS.values() if c.job})  # one job, one command


def test_a_method_plan_fails_before_the_run_folder_is_written(tmp_path, capsys):
    """plan(config) is where a bad setting stops a method: nothing of the run is written."""
    from culture_rl.config import load_config
    from culture_rl.core.errors import ConfigError
    from culture_rl.methods.align import ppo

    config = load_config(None, [f"run.storage_path={tmp_path}", "ppo.reward=no_such_reward"])
    with pytest.raises(ConfigError, match="ppo.reward"):
        ppo.plan(config)
    assert not any(tmp_path.iterdir())


def test_bad_dpo_pairs_file_names_the_line_and_leaves_no_run_dir(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
                     '{"prompt": "p", "chosen": "a"}\n', "utf-8")
    code, _, err = run_main(capsys, "dpo", "--config", str(REPO / "configs" / "quickstart.yaml"),
                            f"run.storage_path={tmp_path}/runs", "dpo.pairs=file",
                            f"dpo.pairs_path={pairs}")
    assert code == 2 and err.count("\n") == 1
    assert f"{pairs}, line 2" in err and "'rejected'" in err
    assert not (tmp_path / "runs").exists()
