"""`culture-rl eval` and `culture-rl report` on bad input: one line naming the item, exit 2,
nothing left behind. (Every check runs before Ray is joined, so none of these start Ray.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from culture_rl.cli import main
from tests.support.tiny_model import build_minimal_model

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "eval_quickstart.yaml")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return build_minimal_model(tmp_path_factory.mktemp("model"))


def run_eval(capsys, tmp_path, *args):
    code = main(["eval", "--config", QUICKSTART, f"run.storage_path={tmp_path}/runs", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_exit_2(code, err, tmp_path, *needles):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("culture-rl: error:"), err
    for needle in needles:
        assert needle in err, err
    assert not (tmp_path / "runs").exists()  # the run folder this call made is gone


def test_unknown_evaluation_names_it_and_the_registered_ones(tmp_path, capsys, model_dir):
    code, _, err = run_eval(capsys, tmp_path, "--model", model_dir,
                            "eval.evaluations=[associations,lexcal_norms]")
    _one_line_exit_2(code, err, tmp_path, "eval.evaluations", "'lexcal_norms'", "lexical_norms")


def test_missing_checkpoint_names_the_model(tmp_path, capsys):
    code, _, err = run_eval(capsys, tmp_path, "--model", str(tmp_path / "no_such_model"),
                            "--label", "mine")
    _one_line_exit_2(code, err, tmp_path, "eval.models.mine", "no_such_model")


def test_stage_without_export_names_the_stage(tmp_path, capsys):
    code, _, err = run_eval(capsys, tmp_path)  # eval_quickstart.yaml names base/sft/ppo stages
    _one_line_exit_2(code, err, tmp_path, "eval.models.base", "pretrain")


def test_culture_not_in_the_data(tmp_path, capsys, model_dir):
    code, _, err = run_eval(capsys, tmp_path, "--model", model_dir, "eval.cultures=[Zedland]")
    _one_line_exit_2(code, err, tmp_path, "eval.cultures", "Zedland", "Avalor")


def test_tension_pair_must_be_two_cultures(tmp_path, capsys, model_dir):
    code, _, err = run_eval(capsys, tmp_path, "--model", model_dir, "eval.tension_pair=[Avalor]")
    _one_line_exit_2(code, err, tmp_path, "eval.tension_pair")


def test_bad_statements_file_names_the_line(tmp_path, capsys, model_dir):
    statements = tmp_path / "values.jsonl"
    statements.write_text('{"text": "elders know best", "label": "tradition"}\n'
                          '{"text": "rules may be questioned"}\n', "utf-8")
    code, _, err = run_eval(capsys, tmp_path, "--model", model_dir,
                            f"data.statements_path={statements}")
    _one_line_exit_2(code, err, tmp_path, str(statements), "line 2", "'label'")


def test_report_without_results_names_the_file(tmp_path, capsys):
    code = main(["report", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "eval.json" in err, err
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("bad_id", ['[1]', '{"n": 1}', "true", '""'])
def test_statement_id_must_be_a_string(tmp_path, capsys, model_dir, bad_id):
    # Any JSON value was turned into an id with str(): a list became the id "[1]".
    statements = tmp_path / "values.jsonl"
    statements.write_text('{"text": "elders know best", "label": "tradition"}\n'
                          f'{{"text": "rules may be questioned", "label": "autonomy", '
                          f'"id": {bad_id}}}\n', "utf-8")
    code, _, err = run_eval(capsys, tmp_path, "--model", model_dir,
                            f"data.statements_path={statements}")
    _one_line_exit_2(code, err, tmp_path, str(statements), "line 2", "'id'")
