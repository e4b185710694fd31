"""The quickstart end to end (session fixture): SFT must beat the biased base on held-out P@5,
and PPO must beat SFT on the held-out ranking rho (ALIGN's reward, on cues PPO never saw)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def test_sft_beats_base_on_held_out_p_at_5(quickstart_run):
    config, summary = quickstart_run
    base, sft = summary["stages"]["base"], summary["stages"]["sft"]
    assert summary["target_culture"] == "Borenia"
    assert sft["p@5"] >= base["p@5"] + 0.10, (base["p@5"], sft["p@5"])
    # The base is biased toward the dominant culture of its corpus; SFT moves it to the target.
    assert base["p@5_by_culture"]["Avalor"] > base["p@5_by_culture"]["Borenia"]
    assert sft["p@5_by_culture"]["Borenia"] > sft["p@5_by_culture"]["Avalor"]


def test_ppo_raises_held_out_ranking_rho_over_sft(quickstart_run):
    config, summary = quickstart_run
    sft, ppo = summary["stages"]["sft"], summary["stages"]["ppo"]
    assert ppo["ranking_rho"] >= sft["ranking_rho"] + 0.10, (sft["ranking_rho"],
                                                            ppo["ranking_rho"])
    assert -1.0 <= sft["ranking_rho"] <= 1.0
    assert 0.0 <= ppo["ranking_parse_failure_rate"] <= 1.0
    rows = [json.loads(line) for line in
            (config.run_dir / "ppo" / "metrics.jsonl").read_text("utf-8").splitlines()]
    steps = [r["step"] for r in rows if "reward_mean" in r]
    assert steps == list(range(1, config.ppo.max_steps + 1))
    assert all(r["logprob_gap"] < 1e-3 for r in rows if "logprob_gap" in r)  # synced generators


def test_summary_files(quickstart_run):
    config, summary = quickstart_run
    written = json.loads((config.run_dir / "summary.json").read_text("utf-8"))
    assert written["target_culture"] == summary["target_culture"]
    for stage in ("base", "sft", "ppo"):
        row = written["stages"][stage]
        assert 0.0 <= row["p@5"] <= 1.0 and 0.0 <= row["wvs_js"] <= 1.0
        assert -1.0 <= row["ranking_rho"] <= 1.0
        assert row["n_cues"] > 0 and row["n_questions"] > 0
    table = (config.run_dir / "summary.md").read_text("utf-8")
    assert "| base |" in table and "| sft |" in table and "| ppo |" in table
    assert (config.run_dir / "world" / "swow" / "Borenia.csv").is_file()


def test_finished_stage_rerun_is_a_no_op(quickstart_run, capsys):
    from culture_rl.data.align_data import load_align_data
    from culture_rl.methods.align.sft import run_sft

    config, _ = quickstart_run
    result = run_sft(config, load_align_data(config))
    assert result.already_finished
    assert "already finished" in capsys.readouterr().out


def test_cli_eval_on_the_trained_model(quickstart_run, tmp_path):
    """`culture-rl eval --model` in another run folder: the same numbers as the quickstart's
    evaluation of the same model (greedy, same prompts, same actor split)."""
    import subprocess
    import sys
    from pathlib import Path

    config, summary = quickstart_run
    script = Path(sys.executable).with_name("culture-rl")
    proc = subprocess.run([str(script), "eval", "--config", str(config.run_dir / "config.yaml"),
                           "--model", str(config.run_dir / "sft" / "export" / "model"),
                           "--label", "cli", "run.name=cli_eval",
                           "eval.evaluations=[associations,wvs]"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = config.run_dir.with_name("cli_eval")
    results = json.loads((run_dir / "eval" / "eval.json").read_text("utf-8"))
    assert list(results["models"]) == ["cli"] and "--label cli" in results["command"]
    p5 = next(r["value"] for r in results["records"] if (r["culture"], r["metric"]) ==
              (summary["target_culture"], "p@5"))
    assert p5 == pytest.approx(summary["stages"]["sft"]["p@5"], abs=1e-4)
    assert "| cli |" in proc.stdout and (run_dir / "report.html").is_file()
    assert (run_dir / "eval" / "models" / "cli.json").is_file()


def test_quickstart_writes_the_report(quickstart_run):
    config, summary = quickstart_run
    assert summary["report"] == str(config.run_dir / "report.html")
    markdown = (config.run_dir / "report.md").read_text("utf-8")
    for heading in ("Summary", "Associations (P@k)", "Lexical norms", "World Values Survey",
                    "High-tension items", "Value classification", "Ranking reward", "CALM",
                    "Training curves", "Provenance"):
        assert f"## {heading}" in markdown
    results = json.loads((config.run_dir / "eval" / "eval.json").read_text("utf-8"))
    assert list(results["models"]) == ["base", "sft", "ppo", "calm"]  # calm.demo is on
    calm = summary["stages"]["calm"]  # the CALM model, evaluated like the others
    assert 0 <= calm["p@5"] <= 1 and 0 <= calm["wvs_js"] <= 1
    evaluations = {r["evaluation"] for r in results["records"]}
    assert evaluations == set(config.eval.evaluations)
    images = sorted(p.name for p in (config.run_dir / "report_files").iterdir())
    assert "wvs_js.png" in images and any(name.startswith("training_ppo") for name in images)


def test_demo_runs_the_calm_comparison(quickstart_run):
    """The demo's CALM stage: CALM, the baseline on the same budget and every ablation, with
    finite held-out scores in summary.json, summary.md and the report."""
    import math

    config, summary = quickstart_run
    assert config.calm.demo and config.calm.task.name == "culture_dependent"
    written = json.loads((config.run_dir / "summary.json").read_text("utf-8"))
    calm = written["calm"]
    expected = {"calm", "baseline", *(f"no_{m}" for m in config.calm.train.ablations)}
    if config.calm.train.compare_epochs not in (0, config.calm.train.epochs):
        expected.add("calm_short")
    assert set(calm["models"]) == expected
    assert calm["task"] == "culture_dependent" and calm["n_heldout"] > 0
    for name, row in calm["models"].items():
        for key in ("accuracy", "macro_f1", "seen_accuracy", "unseen_accuracy"):
            assert math.isfinite(row[key]) and 0.0 <= row[key] <= 1.0, (name, key, row)
        assert row["steps"] > 0
    assert calm["models"]["baseline"]["steps"] == calm["models"]["calm"]["steps"]
    # The numbers are those of the CALM stage's own results.
    results = json.loads((config.run_dir / "calm" / "results.json").read_text("utf-8"))
    assert calm["models"]["calm"]["accuracy"] == pytest.approx(
        results["models"]["calm"]["accuracy"], abs=1e-4)
    table = (config.run_dir / "summary.md").read_text("utf-8")
    assert "CALM value identification" in table and "| baseline |" in table
    markdown = (config.run_dir / "report.md").read_text("utf-8")
    assert "## CALM" in markdown
    part = markdown.split("## CALM", 1)[1].split("\n## ", 1)[0]
    assert "| baseline (LoRA + linear head) |" in part and "| w/o MoE |" in part
    assert "| w/o cross-attention |" in part
    assert f"{results['models']['baseline']['accuracy']:.3f}" in part
