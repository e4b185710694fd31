"""Reward scoring throughput: the RewardPool with 2 scorer actors against 1, and against the
plain in-process function, on the same batch of synthetic ALIGN ranking answers scored by the
registered "ranking_spearman" reward -- in one run, repeats interleaved.

    python -m ray_jobs.benchmarks.reward_pool --out reward_pool.json

Each scorer takes ``num_cpus=1``. Ray gets one logical CPU more than the machine's cores so the
1- and 2-scorer pools can live side by side for interleaved repeats; only one pool scores at a
time, so at most 2 scorers are ever busy. Goal: 2 scorers >= 1.7x the samples/s of 1 at a
realistic PPO batch (64-512 answers) and at a large one, where per-call overhead (pickling the
batch, two RPCs) is amortised. Median and spread (min-max) over ``--repeats`` after a warm-up.
The same run measures the machine's own ceiling -- 2 busy processes against 1 -- because
shared or hyper-threaded vCPUs cannot give 2x whatever the pool does.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from culture_rl.rl.rewards import REWARD_FUNCTIONS
from ray_jobs.benchmarks.arguments import positive_int, positive_ints
from ray_jobs.benchmarks.collect import finish

WORDS = [f"word{i}" for i in range(500)]


def synthetic_batch(size: int, seed: int = 0, words_per_ranking: int = 10,
                    samples_per_prompt: int = 8) -> tuple[list[str], list[dict]]:
    """ALIGN-style ranking answers: ``samples_per_prompt`` samples share one prompt's metadata
    (as in a PPO step); answers are the human order with a few swaps and dropped words, some with
    reasoning before the "Final Ranking" heading, a few unparseable."""
    rng = random.Random(seed)
    answers, metas = [], []
    for index in range(size):
        if index % samples_per_prompt == 0:
            human = rng.sample(WORDS, words_per_ranking)
            meta = {"human_order": human, "culture": rng.choice(["US", "CN", "DE", "IN"])}
        order = list(meta["human_order"])
        for _ in range(rng.randint(0, 6)):
            i, j = rng.randrange(len(order)), rng.randrange(len(order))
            order[i], order[j] = order[j], order[i]
        order = order[:rng.randint(7, len(order))]
        if rng.random() < 0.03:
            answer = "I cannot rank these words."
        else:
            reasoning = "Let me think about how often people say each word. " * rng.randint(0, 3)
            answer = reasoning + "Final Ranking\n" + "\n".join(
                f"{rank}: {word}" for rank, word in enumerate(order, start=1))
        answers.append(answer)
        metas.append(meta)
    return answers, metas


def busy_loop(n: int) -> float:
    """Pure-Python CPU work (like the reward's parsing); returns its own run time."""
    start, total = time.perf_counter(), 0
    for i in range(n):
        total += i * i
    return time.perf_counter() - start


def parallel_ceiling(repeats: int, n: int = 3_000_000) -> float:
    """How much faster 2 busy processes finish 2 units of work than 1 process does: the most a
    2-scorer pool can gain here (2.0 on 2 idle physical cores; less on shared or SMT vCPUs)."""
    import ray

    busy = ray.remote(num_cpus=1)(busy_loop)
    ray.get([busy.remote(1000) for _ in range(2)])  # start both workers
    ratios = []
    for _ in range(repeats):
        one = ray.get(busy.remote(n))
        two = max(ray.get([busy.remote(n) for _ in range(2)]))
        ratios.append(2 * one / two)
    return statistics.median(ratios)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="512,4096", type=positive_ints,
                        help="comma-separated batch sizes (answers per score call)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed calls per method")
    parser.add_argument("--reward", default="ranking_spearman", choices=sorted(REWARD_FUNCTIONS))
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import ray

    from culture_rl.rl.rewards import score_batch
    from culture_rl.rl.scorers import RewardPool

    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus + 1, include_dashboard=False, configure_logging=False)
    ceiling = parallel_ceiling(args.repeats)
    results: dict = {"machine": {"cpus": cpus, "load_average_1m": os.getloadavg()[0],
                                 "parallel_ceiling_2_processes": ceiling},
                     "reward": args.reward, "repeats": args.repeats, "batches": {}}
    pools = {"pool_1_scorer": RewardPool(args.reward, num_scorers=1, cpus_per_scorer=1),
             "pool_2_scorers": RewardPool(args.reward, num_scorers=2, cpus_per_scorer=1)}
    try:
        for batch in args.batches:
            answers, metas = synthetic_batch(batch)
            methods = {"in_process": lambda: score_batch(args.reward, answers, metas),
                       **{name: (lambda pool=pool: pool.score(answers, metas))
                          for name, pool in pools.items()}}
            reference = methods["in_process"]()
            for name, method in methods.items():  # warm-up (imports, caches) and a check
                assert method() == reference, f"{name} scored differently"
            seconds: dict[str, list[float]] = {name: [] for name in methods}
            for _ in range(args.repeats):  # interleaved: noise hits every method alike
                for name, method in methods.items():
                    seconds[name].append(timed(method))
            runs = {}
            for name, values in seconds.items():
                rates = [batch / s for s in values]
                runs[name] = {"samples_per_s": statistics.median(rates), "min": min(rates),
                              "max": max(rates), "ms_per_call": 1e3 * statistics.median(values)}
            one = runs["pool_1_scorer"]["samples_per_s"]
            for run in runs.values():
                run["ratio_vs_1_scorer"] = run["samples_per_s"] / one
            results["batches"][batch] = {"runs": runs,
                                         "ms_per_answer_in_process": 1e3 * statistics.median(
                                             seconds["in_process"]) / batch}
            print(f"batch {batch}: 2 scorers {runs['pool_2_scorers']['ratio_vs_1_scorer']:.2f}x "
                  f"1 scorer", flush=True)
    finally:
        for pool in pools.values():
            pool.shutdown()
        ray.shutdown()

    lines = ["| batch | method | samples/s median (min-max) | ms per call | vs 1 scorer |",
             "|---|---|---|---|---|"]
    for batch, result in results["batches"].items():
        for name, run in result["runs"].items():
            lines.append(f"| {batch} | {name} | {run['samples_per_s']:.0f} "
                         f"({run['min']:.0f}-{run['max']:.0f}) | {run['ms_per_call']:.1f} | "
                         f"{run['ratio_vs_1_scorer']:.2f}x |")
    cost = ", ".join(f"{r['ms_per_answer_in_process']:.2f} ms at batch {b}"
                     for b, r in results["batches"].items())
    return finish(results, f"{args.reward}; {args.repeats} repeats; reward cost per answer in "
                  f"process: {cost}; 2 busy processes do {ceiling:.2f}x the work of 1 on this "
                  "machine", "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
