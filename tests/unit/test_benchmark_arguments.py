"""The benchmarks' flags: a bad value is a one-line usage error naming the flag, exit code 2,
before Ray or a model starts and with nothing left behind."""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import tempfile

import pytest

from ray_jobs.benchmarks.arguments import (choices_of, existing_path, non_negative_int,
                                           positive_float, positive_int, positive_ints)


def test_number_types_take_what_they_say_and_name_what_they_refuse():
    assert positive_int("3") == 3 and non_negative_int("0") == 0 and positive_float("0.5") == 0.5
    assert positive_ints("1, 4,16") == [1, 4, 16]
    for parse, text, says in [(positive_int, "0", ">= 1"), (positive_int, "2.5", "whole"),
                              (non_negative_int, "-1", ">= 0"), (positive_float, "0", "> 0"),
                              (positive_float, "nan", "> 0"), (positive_ints, "1,x", "'x'"),
                              (positive_ints, ",", "comma-separated")]:
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            parse(text)


def test_choice_lists_keep_order_drop_repeats_and_convert():
    stages = choices_of((0, 1, 2, 3), int)
    assert stages("3,0,3") == [3, 0]
    assert choices_of((0, 1, 2, 3), int, allow_empty=True)("") == []
    with pytest.raises(argparse.ArgumentTypeError, match="'5'; choose from 0, 1, 2, 3"):
        stages("0,5")
    with pytest.raises(argparse.ArgumentTypeError, match="expected some of"):
        stages("")
    with pytest.raises(argparse.ArgumentTypeError, match="does not exist"):
        existing_path("/no/such/folder")


@pytest.mark.parametrize("benchmark, argv, says", [
    ("weight_sync", ["--sizes", "1M"], "argument --sizes: unknown value '1M'"),
    ("weight_sync", ["--repeats", "0"], "argument --repeats: expected a number >= 1"),
    ("weight_sync", ["--bucket-mb", "-1"], "argument --bucket-mb: expected a number > 0"),
    ("rollout_throughput", ["--batches", "1,0"], "argument --batches: expected a number >= 1"),
    ("reward_pool", ["--batches", "-3"], "argument --batches: expected a number >= 1"),
    ("reward_pool", ["--reward", "nope"], "argument --reward: invalid choice: 'nope'"),
    ("sft_throughput", ["--stages", "5"], "argument --stages: unknown value '5'"),
    ("sft_throughput", ["--models", "huge"], "argument --models: unknown value 'huge'"),
    ("sft_throughput", ["--global-batch", "15"], "--global-batch: 15 rows do not split"),
    ("sft_throughput", ["--steps", "8", "--warmup-steps", "5"], "no 5-step logging window"),
    ("sft_startup_profile", ["--zero-stage", "7"], "argument --zero-stage: invalid choice"),
    ("ppo_step", ["--steps", "0"], "argument --steps: expected a number >= 1"),
    ("ppo_step", ["--sides", "ours"], "--sides: expected 'ours', 'naive'"),
    ("ppo_step", ["--policy", "/no/such/policy"], "argument --policy: '/no/such/policy' does"),
    ("ppo_step", ["--prompts", "3", "--samples-per-prompt", "3", "--mini-batch", "4"],
     "ppo.mini_batch_size: the 9 samples per step"),
    ("collect", ["/no/such/folder", "out.json"], "argument folder: '/no/such/folder' does"),
])
def test_bad_flags_are_one_line_usage_errors_with_exit_code_2(benchmark, argv, says, capsys):
    module = importlib.import_module(f"ray_jobs.benchmarks.{benchmark}")
    before = set(glob.glob(f"{tempfile.gettempdir()}/culture_rl_*bench_*"))
    with pytest.raises(SystemExit) as stopped:
        module.main(argv)
    assert stopped.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert ": error: " in last and says in last  # argparse's "<prog>: error: <what>"
    assert set(glob.glob(f"{tempfile.gettempdir()}/culture_rl_*bench_*")) == before


def test_collect_names_the_file_that_is_not_json(tmp_path, capsys):
    from ray_jobs.benchmarks.collect import main

    (tmp_path / "good.json").write_text(json.dumps({"a": 1}), "utf-8")
    (tmp_path / "broken.json").write_text('{"a": 1,\n', "utf-8")
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path), str(tmp_path / "all.json")])
    assert stopped.value.code == 2
    assert f"{tmp_path / 'broken.json'}: line 2: not JSON" in capsys.readouterr().err
    assert not (tmp_path / "all.json").exists()
    (tmp_path / "broken.json").unlink()
    main([str(tmp_path), str(tmp_path / "all.json")])
    assert json.loads((tmp_path / "all.json").read_text("utf-8")) == {"good": {"a": 1}}
