"""A hand-made run folder for the evaluation report's tests: eval.json in the harness's schema
(3 models, 3 cultures, every evaluation) and an SFT-like and a PPO-like metrics.jsonl.

Known by construction: "ppo" is the best model on Borenia's P@5 (0.62), WVS JS (0.11) and
ranking rho (0.48); "sft" on value-classification accuracy (0.81).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

MODELS = ("base", "sft", "ppo")
CULTURES = ("Avalor", "Borenia", "Calyxa")
COMMAND = "culture-rl eval --config configs/eval_quickstart.yaml"
CONFIG_YAML = "run:\n  name: quickstart\neval:\n  models: [base, sft, ppo]\n"
NORMS = ("valence", "arousal", "dominance", "concreteness")
# Figures the full fixture yields: associations, lexical norms, WVS heatmap, high-tension,
# and one training-curve figure per metrics.jsonl (sft/, ppo/).
FIGURES = 6


def record(model, culture, evaluation, metric, value, subset="all", n=18):
    return {"model": model, "culture": culture, "evaluation": evaluation, "metric": metric,
            "subset": subset, "value": value, "n": n}


def eval_records() -> list[dict]:
    skill = {"base": 0.0, "sft": 0.5, "ppo": 1.0}  # ppo best on the target culture
    records = []
    for m in MODELS:
        s = skill[m]
        for c in CULTURES:
            t = s if c == "Borenia" else 0.2
            for k, base in (("p@1", 0.2), ("p@3", 0.3), ("p@5", 0.4), ("p@10", 0.3)):
                records.append(record(m, c, "associations", k, round(base + 0.22 * t, 3)))
            records.append(record(m, c, "associations", "parse_failure_rate", 0.1 - 0.05 * s))
            for key, base in (("js", 0.31), ("emd", 0.25), ("kl_model_culture", 0.4),
                              ("kl_culture_model", 0.45)):
                records.append(record(m, c, "wvs", key, round(base - 0.2 * t, 3), n=12))
            records += [record(m, c, "wvs", "cosine", round(0.7 + 0.2 * t, 3), n=12),
                        record(m, c, "wvs", "argmax_agree", round(0.4 + 0.3 * t, 3), n=12)]
            for options, n in (("options=4", 7), ("options=5", 5)):
                records.append(record(m, c, "wvs", "js", round(0.33 - 0.2 * t, 3), options, n))
                records.append(record(m, c, "wvs", "emd", round(0.2 - 0.1 * t, 3), options, n))
            for norm in NORMS:
                records += [record(m, c, "lexical_norms", f"median_{norm}", 5.0 + 0.1 * t),
                            record(m, c, "lexical_norms", f"human_median_{norm}", 5.2),
                            record(m, c, "lexical_norms", f"gap_{norm}", round(0.6 - 0.4 * t, 3))]
            records += [record(m, c, "lexical_norms", "coverage", 0.9),
                        record(m, c, "lexical_norms", "concrete_share", 0.55)]
            records.append(record(m, c, "lexical_norms", "median_dominance", None))  # unrated
            records += [record(m, c, "ranking", "rho", round(0.1 + 0.38 * t, 3), n=10),
                        record(m, c, "ranking", "parse_failure_rate", 0.2, n=10)]
        accuracy = {"base": 0.5, "sft": 0.81, "ppo": 0.7}[m]
        for c in ("all", *CULTURES):
            records += [record(m, c, "value_classification", "accuracy", accuracy, n=30),
                        record(m, c, "value_classification", "macro_f1", accuracy - 0.1, n=30)]
        closer_b = round(3 + 5 * s)
        records += [record(m, "Avalor", "high_tension", "items_closer", 10 - closer_b,
                           "Avalor|Borenia", 10),
                    record(m, "Borenia", "high_tension", "items_closer", closer_b,
                           "Avalor|Borenia", 10)]
    return records


def details(rng: random.Random) -> dict:
    out = {}
    human = {n: [round(rng.gauss(5.2, 0.6), 2) for _ in range(18)] for n in NORMS}
    human["valence"][3] = None  # a cue whose words the lexicon does not rate
    for i, m in enumerate(MODELS):
        model = {n: [round(rng.gauss(4.8 + 0.2 * i, 0.7), 2) for _ in range(18)] for n in NORMS}
        model["arousal"][0] = None
        items = [{"id": f"q{j}", "question": f"question {j}?",
                  "distance_a": round(rng.uniform(0.05, 0.5), 3),
                  "distance_b": round(rng.uniform(0.05, 0.5) * (1 - 0.3 * i), 3)}
                 for j in range(10)]
        out[m] = {"lexical_norms": {"Borenia": {"model": model, "human": human}},
                  "high_tension": {"pair": ["Avalor", "Borenia"], "items": items},
                  "samples": [{"cue": "tomu", "answer": "bala, kiro"}]}
    return out


def eval_json(**overrides) -> dict:
    data = {
        "schema": 1, "run": "quickstart", "created": "2026-12-01T09:00:00Z",
        "command": COMMAND, "config_yaml": CONFIG_YAML, "target_culture": "Borenia",
        "cultures": list(CULTURES),
        "evaluations": ["associations", "lexical_norms", "wvs", "high_tension",
                        "value_classification", "ranking"],
        "models": {m: {"path": f"/abs/{m}/export/model", "seconds": 12.5} for m in MODELS},
        "records": eval_records(),
        "comparisons": [
            {"evaluation": "lexical_norms", "culture": "Borenia", "norm": "valence",
             "model_a": "base", "model_b": "sft", "median_gap_a": 0.41, "median_gap_b": 0.22,
             "closer": "sft", "p_value": 0.031, "n": 18}],
        "details": details(random.Random(0)),
    }
    data.update(overrides)
    return data


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def build_run(run_dir: Path, data: dict | None = None, metrics: bool = True) -> Path:
    """Write the fixture run folder (eval/eval.json, sft/ and ppo/ metrics.jsonl, config.yaml)."""
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval" / "eval.json").write_text(json.dumps(data or eval_json(), indent=1), "utf-8")
    (run_dir / "config.yaml").write_text(CONFIG_YAML, "utf-8")
    if metrics:
        sft = [{"stage": "sft", "step": s, "loss": 3.0 / s, "learning_rate": 1e-4}
               for s in range(1, 9)]
        sft += [{"stage": "sft", "step": 4, "eval_loss": 1.2},
                {"stage": "sft", "step": 8, "eval_loss": 0.9, "eval_p@5": 0.42, "epoch": 2.0},
                {"stage": "sft", "loss": 9.9, "train_runtime": 12.0}]  # no step: skipped
        write_jsonl(run_dir / "sft" / "metrics.jsonl", sft)
        ppo = [{"step": 0, "eval_ranking_rho": 0.1, "eval_parse_failure_rate": 0.2}]
        ppo += [{"step": s, "reward_mean": 0.1 * s, "kl": 0.01 * s, "kl_coef": 0.05}
                for s in range(1, 7)]
        write_jsonl(run_dir / "ppo" / "metrics.jsonl", ppo)
    return run_dir
