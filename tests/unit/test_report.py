"""The evaluation report (culture_rl/eval/report.py) from a hand-made run folder."""

from __future__ import annotations

import base64
import html
import json
import re

import pytest

from culture_rl.core.errors import DataError
from culture_rl.eval import plots, report
from culture_rl.eval.report import write_report
from tests.support.report_fixture import (COMMAND, CONFIG_YAML, FIGURES, build_run, eval_json,
                                          write_jsonl)

HEADINGS = ["Summary", "Associations (P@k)", "Lexical norms", "World Values Survey",
            "High-tension items", "Value classification", "Ranking reward", "Training curves",
            "Provenance"]
PNG = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r"<img\b[^>]*>")


def section(markdown: str, heading: str) -> str:
    """The text of one `## heading` section of report.md."""
    parts = re.split(r"^## ", markdown, flags=re.M)
    found = [p for p in parts if p.split("\n", 1)[0] == heading]
    assert len(found) == 1, heading
    return found[0]


def table_cell(text: str, row: str, column: str) -> str:
    """The cell of a markdown table in ``text`` at the row whose first cell is ``row``."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == row:
            return cells[header.index(column)]
    raise AssertionError(f"no row {row!r}")


@pytest.fixture
def written(tmp_path):
    run = build_run(tmp_path / "run")
    paths = write_report(run)
    return run, paths, paths["md"].read_text("utf-8"), paths["html"].read_text("utf-8")


def test_writes_both_documents_with_every_section(written):
    run, paths, md, page = written
    assert paths == {"md": run / "report.md", "html": run / "report.html",
                     "images": run / "report_files"}
    assert paths["md"].is_file() and paths["html"].is_file() and paths["images"].is_dir()
    for heading in HEADINGS:
        assert f"\n## {heading}\n" in md, heading
        assert f"<h2>{html.escape(heading)}</h2>" in page, heading
    assert "<title>Evaluation report: quickstart</title>" in page
    assert not list(run.glob(".report-*"))  # the staging folder is gone


def test_best_value_of_each_summary_column_is_bold(written):
    _, _, md, page = written
    summary = section(md, "Summary")
    assert table_cell(summary, "ppo", "Borenia p@5") == "**0.620**"  # highest P@5
    assert table_cell(summary, "sft", "Borenia p@5") == "0.510"
    assert table_cell(summary, "ppo", "Borenia js") == "**0.110**"  # lowest JS distance
    assert table_cell(summary, "base", "Borenia js") == "0.310"
    assert table_cell(summary, "ppo", "Borenia rho") == "**0.480**"
    assert table_cell(summary, "sft", "all accuracy") == "**0.810**"
    assert table_cell(summary, "ppo", "all accuracy") == "0.700"
    # Every model scores the same on Avalor: nothing to single out.
    assert all(table_cell(summary, m, "Avalor p@5") == "0.444" for m in ("base", "sft", "ppo"))
    assert re.search(r"<td class=\"num\"><strong>0\.620</strong></td>", page)


def test_tables_show_missing_values_as_dash_and_escape_pipes(written):
    _, _, md, page = written
    norms = section(md, "Lexical norms")
    assert re.search(r"^\| Borenia \| ppo \| 5\.100 \| 5\.100 \| - \| 5\.100 \|", norms, re.M)
    assert "| Borenia | valence | base | sft | 0.410 | 0.220 | sft | 0.031 | 18 |" in norms
    assert "| Avalor\\|Borenia | ppo | 2 | 8 | 10 |" in section(md, "High-tension items")
    assert "<td>Avalor|Borenia</td>" in page
    assert "| 5 | Borenia | ppo | **0.130** | **0.100** | 5 |" in section(md, "World Values Survey")


def test_every_image_is_an_embedded_png_and_the_markdown_links_the_files(written):
    run, _, md, page = written
    images = IMG.findall(page)
    assert len(images) == FIGURES
    for tag in images:
        src = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag)
        assert src, tag[:80]
        assert base64.b64decode(src.group(1)).startswith(PNG)
    assert not re.search(r"<script|<link|\bhref=|src=\"(?!data:)", page)
    linked = re.findall(r"!\[[^\]]*\]\((report_files/[^)]+\.png)\)", md)
    assert len(linked) == FIGURES
    assert sorted(p.name for p in (run / "report_files").iterdir()) == sorted(
        link.split("/")[1] for link in linked)
    assert all((run / link).read_bytes().startswith(PNG) for link in linked)


def test_report_names_the_command_and_the_config(written):
    run, _, md, page = written
    provenance = section(md, "Provenance")
    assert f"```bash\n{COMMAND}\n```" in provenance
    assert f"```yaml\n{CONFIG_YAML.rstrip()}\n```" in provenance
    assert str(run / "eval" / "eval.json") in provenance
    assert "2026-12-01T09:00:00Z" in provenance
    assert f"| sft | {run / 'sft' / 'metrics.jsonl'} | {run / 'config.yaml'} |" in provenance
    details = re.search(r"<details><summary>[^<]*</summary><pre><code>(.*?)</code></pre>"
                        r"</details>", page, re.S)
    assert details and html.unescape(details.group(1)) == CONFIG_YAML
    assert html.escape(COMMAND) in page


def test_training_curves_plot_the_logged_series_against_the_step(tmp_path, monkeypatch):
    seen = {}
    real = plots.training_curves

    def spy(title, series):
        seen[title] = {key: list(zip(*value)) for key, value in series.items()}
        return real(title, series)

    monkeypatch.setattr(plots, "training_curves", spy)
    md = write_report(build_run(tmp_path / "run"))["md"].read_text("utf-8")
    assert list(seen) == ["sft", "ppo"]  # pipeline order, each figure titled with its folder
    assert set(seen["sft"]) == {"loss", "eval_loss", "eval_p@5"}  # not learning_rate
    assert seen["sft"]["eval_loss"] == [(4.0, 1.2), (8.0, 0.9)]
    assert seen["sft"]["loss"] == [(float(s), 3.0 / s) for s in range(1, 9)]  # no stepless row
    assert set(seen["ppo"]) == {"eval_ranking_rho", "reward_mean", "kl", "kl_coef"}
    assert seen["ppo"]["kl"][-1] == (6.0, 0.06)
    curves = section(md, "Training curves")
    assert "report_files/training_sft.png" in curves and "report_files/training_ppo.png" in curves


def test_missing_eval_json_raises_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    (run / "sft").mkdir(parents=True)
    with pytest.raises(DataError) as error:
        write_report(run)
    message = str(error.value)
    assert message == f"{run / 'eval' / 'eval.json'}: no evaluation results; run culture-rl " \
                      "eval first"
    assert "\n" not in message
    assert sorted(p.name for p in run.iterdir()) == ["sft"]


def test_malformed_eval_json_names_the_file_and_line(tmp_path):
    run = build_run(tmp_path / "run")
    (run / "eval" / "eval.json").write_text('{\n  "schema": 1,\n  "records": [,]\n}\n')
    with pytest.raises(DataError, match=r"eval\.json, line 3: not valid JSON"):
        write_report(run)
    (run / "eval" / "eval.json").write_text(json.dumps({"schema": 1}))
    with pytest.raises(DataError, match="no 'records' list"):
        write_report(run)
    (run / "eval" / "eval.json").write_text(json.dumps(eval_json(schema=2)))
    with pytest.raises(DataError, match="schema 2 is not the schema 1"):
        write_report(run)
    assert not (run / "report.md").exists() and not (run / "report_files").exists()


def test_section_without_data_says_not_evaluated(tmp_path):
    data = eval_json()
    data["records"] = [r for r in data["records"] if r["evaluation"] != "high_tension"]
    for detail in data["details"].values():
        del detail["high_tension"]
    run = build_run(tmp_path / "run", data, metrics=False)
    md = write_report(run)["md"].read_text("utf-8")
    assert section(md, "High-tension items").strip().endswith("not evaluated")
    assert "not evaluated" in section(md, "Training curves")
    assert "not evaluated" not in section(md, "World Values Survey")
    page = (run / "report.html").read_text("utf-8")
    assert len(IMG.findall(page)) == FIGURES - 3  # no scatter, no training curves
    assert all(h in md for h in HEADINGS)


def test_malformed_metrics_line_raises_and_keeps_the_previous_report(tmp_path):
    run = build_run(tmp_path / "run")
    paths = write_report(run)
    before = {p: p.read_bytes() for p in [paths["md"], paths["html"],
                                          *paths["images"].iterdir()]}
    write_jsonl(run / "ppo" / "metrics.jsonl", [{"step": 1, "kl": 0.1}])
    with (run / "ppo" / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 2, "kl": 0.2}\n{"step": 3, "kl": \n')
    with pytest.raises(DataError) as error:
        write_report(run)
    assert str(error.value).startswith(f"{run / 'ppo' / 'metrics.jsonl'}, line 3: ")
    after = {p: p.read_bytes() for p in [paths["md"], paths["html"], *paths["images"].iterdir()]}
    assert after == before
    assert not list(run.glob(".report-*"))


def test_rewriting_replaces_the_figures_of_the_previous_report(tmp_path):
    run = build_run(tmp_path / "run")
    write_report(run)
    assert (run / "report_files" / "training_ppo.png").is_file()
    (run / "ppo" / "metrics.jsonl").unlink()
    write_report(run)
    assert not (run / "report_files" / "training_ppo.png").exists()
    assert (run / "report_files" / "training_sft.png").is_file()
    assert "training_ppo" not in (run / "report.md").read_text("utf-8")


def test_eval_folder_metrics_are_not_training_runs(tmp_path):
    run = build_run(tmp_path / "run")
    write_jsonl(run / "eval" / "metrics.jsonl", [{"step": 1, "loss": 1.0}])
    write_jsonl(run / "trials" / "t1" / "sft" / "metrics.jsonl", [{"step": 1, "loss": 1.0}])
    assert [p.relative_to(run).as_posix() for p in report.metrics_files(run)] == [
        "sft/metrics.jsonl", "ppo/metrics.jsonl", "trials/t1/sft/metrics.jsonl"]


def calm_results() -> dict:
    def scores(acc, f1, seen, unseen):
        return {"accuracy": acc, "macro_f1": f1, "n": 96, "by_culture": {},
                "by_subset": {"seen": {"accuracy": seen, "macro_f1": seen - 0.05, "n": 48},
                              "unseen": {"accuracy": unseen, "macro_f1": unseen - 0.05,
                                         "n": 48}}}
    return {"labels": ["a", "b"], "cultures": ["Avalor"], "n_heldout": 96, "eval_fraction": 0.2,
            "seed": 42, "task": "culture_dependent",
            "models": {"calm": {**scores(0.61, 0.58, 0.7, 0.52), "steps": 48},
                       "baseline": {**scores(0.44, 0.40, 0.5, 0.38), "steps": 48},
                       "no_moe": {**scores(0.47, 0.45, 0.73, 0.21), "steps": 24}}}


def test_calm_section_only_with_calm_results(tmp_path, written):
    _, _, md, _ = written
    assert "\n## CALM\n" not in md  # no calm/results.json in the fixture
    run = build_run(tmp_path / "calm_run")
    (run / "calm").mkdir()
    (run / "calm" / "results.json").write_text(json.dumps(calm_results()), "utf-8")
    md = write_report(run)["md"].read_text("utf-8")
    text = section(md, "CALM")
    assert table_cell(text, "CALM", "accuracy") == "**0.610**"
    assert table_cell(text, "baseline (LoRA + linear head)", "macro-F1") == "0.400"
    assert table_cell(text, "w/o MoE", "seen accuracy") == "**0.730**"
    assert table_cell(text, "w/o MoE", "steps") == "24"
    assert "on CALM's budget" in text  # no calm_short: every variant at CALM's budget
    assert "'unseen'" in text
    page = (run / "report.html").read_text("utf-8")
    assert "<h2>CALM</h2>" in page and "<strong>0.610</strong>" in page
    # Before the training curves, after the evaluation sections.
    assert md.index("## Ranking reward") < md.index("## CALM") < md.index("## Training curves")


def test_malformed_calm_results_name_the_file(tmp_path):
    run = build_run(tmp_path / "run")
    (run / "calm").mkdir()
    (run / "calm" / "results.json").write_text('{"models": {"calm": {"accuracy": 1}}}', "utf-8")
    with pytest.raises(DataError, match="results.json.*macro_f1"):
        write_report(run)
    (run / "calm" / "results.json").write_text("{", "utf-8")
    with pytest.raises(DataError, match="results.json"):
        write_report(run)
    assert not (run / "report.md").exists()


def test_metrics_files_read_with_the_data_loaders_line_numbers(tmp_path):
    # U+2028 may stand inside a JSON string: it must not split the record nor shift the lines.
    from culture_rl.eval.report_data import load_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("")
    assert load_metrics(path) == []  # a run whose first step has not finished yet
    path.write_text('{"step": 1}\n\n{"step": 2, "note": "a\u2028b"}\n{"step": \n')
    with pytest.raises(DataError, match="metrics.jsonl.*line 4"):
        load_metrics(path)
    path.write_text('{"step": 1}\n\n{"step": 2, "note": "a\u2028b"}\n')
    assert [row["step"] for row in load_metrics(path)] == [1, 2]
