"""Ray jobs against a real head, as a user runs them: `ray start --head` on loopback with Ray
2.60's token authentication, `culture-rl submit` / `culture-rl jobs` and plain `ray job submit`
as subprocesses, the node's Prometheus endpoint scraped for our `ray_culture_rl_*` series, and
the dashboard's jobs page read in a real headless Chromium.

The jobs reuse the session quickstart's tiny base and SFT model so each takes a minute or two.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.browser import headless_chromium
from tests.support.ray_head import BIN, RayHead, auth_token, client_env, free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SERIES = re.compile(r"^(ray_culture_rl_\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
SEEN: set[str] = set()  # every ray_culture_rl_* series name the jobs of this module exported


@pytest.fixture(scope="module")
def head():
    ray_head = RayHead(metrics_export_port=free_port()).start()
    yield ray_head
    ray_head.stop()


class MetricsScraper:
    """Polls the node's Prometheus endpoint in the background and keeps, per series, every
    value seen: gauges live only while (and shortly after) the process that set them runs."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.values: dict[tuple[str, tuple], list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        SEEN.update(name for name, _ in self.values)

    def _poll(self):
        while not self._stop.wait(2):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    text = response.read().decode("utf-8", "replace")
            except OSError:
                continue
            for line in text.splitlines():
                match = SERIES.match(line)
                if match:
                    name, labels, value = match.groups()
                    key = (name, tuple(sorted((k, v) for k, v in LABEL.findall(labels)
                                              if k in ("run", "workflow", "culture", "model"))))
                    self.values.setdefault(key, []).append(float(value))

    def find(self, name: str, **labels) -> list[float]:
        return [v for (n, tags), values in self.values.items() if n == name
                and all((k, str(val)) in tags for k, val in labels.items()) for v in values]


def culture_rl(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "culture-rl"), *args], cwd=REPO, env=client_env(),
                          capture_output=True, text=True, timeout=timeout)


def submission_id(stdout: str) -> str:
    match = re.search(r"submitted (\S+):", stdout)
    assert match, stdout[-2000:]
    return match.group(1)


def job_client(head):
    from ray.job_submission import JobSubmissionClient

    os.environ.update(client_env())  # this process, too, is a client of the token-auth head
    return JobSubmissionClient(head.dashboard_url)


def job_info(head, job_id):
    return job_client(head).get_job_info(job_id)


def sft_overrides(quickstart_run, storage: Path, name: str) -> list[str]:
    config, _ = quickstart_run
    return [f"run.storage_path={storage}", f"run.name={name}",
            f"model.path={config.run_dir / 'pretrain' / 'export' / 'model'}",
            "sft.epochs=1", "sft.max_steps=6", "sft.logging_steps=1", "sft.eval_max_cues=4",
            "lora.merge_on_export=false"]


def test_submit_follows_the_log_and_exits_with_the_jobs_outcome(head, quickstart_run, tmp_path):
    with MetricsScraper(head.metrics_export_port) as scraper:
        done = culture_rl("submit", "align_sft", "--address", head.dashboard_url,
                          "--config", "configs/quickstart.yaml",
                          *sft_overrides(quickstart_run, tmp_path, "jobsft"))
        time.sleep(4)  # one more scrape after the last log line
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    job_id = submission_id(done.stdout)
    assert job_id.startswith("culture-rl-align_sft-jobsft-")
    assert re.search(r"\[sft\] step \d+/6", done.stdout), done.stdout[-3000:]  # followed live
    assert done.stdout.rstrip().endswith(f"job {job_id}: SUCCEEDED")
    # The outputs are where the config said, not in the job's temporary working dir.
    export = tmp_path / "jobsft" / "sft" / "export"
    assert (export / "finished.json").is_file() and (export / "adapter").is_dir()

    status = culture_rl("jobs", "status", job_id, "--address", head.dashboard_url)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    assert "workflow:      align_sft" in status.stdout and "exit code:     0" in status.stdout
    logs = culture_rl("jobs", "logs", job_id, "--address", head.dashboard_url)
    assert "[sft] step 6/6" in logs.stdout
    listed = culture_rl("jobs", "list", "--address", head.dashboard_url)
    assert re.search(rf"{job_id}\s+SUCCEEDED\s+\S+ \S+\s+align_sft\s+jobsft", listed.stdout)

    # Ray Train's rank 0 exported the stage's numbers while it ran.
    losses = scraper.find("ray_culture_rl_loss", workflow="sft", run="jobsft")
    speeds = scraper.find("ray_culture_rl_tokens_per_s", workflow="sft", run="jobsft")
    assert losses and all(0 < v < 20 for v in losses), scraper.values.keys()
    assert speeds and all(v > 0 for v in speeds)


def test_plain_ray_job_submit_with_a_bad_config_fails_with_the_one_line_error(head, tmp_path):
    job_id = f"bad-config-{int(time.time())}"
    done = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", head.dashboard_url, "--working-dir",
         ".", "--runtime-env", "ray_jobs/runtime_env.yaml", "--submission-id", job_id, "--",
         "python", "-m", "ray_jobs.align_sft", "--config", "configs/quickstart.yaml",
         f"run.storage_path={tmp_path}", "sft.learning_rate=-1"],
        cwd=REPO, env=client_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    info = job_info(head, job_id)
    assert info.status.value == "FAILED" and info.driver_exit_code == 2
    logs = culture_rl("jobs", "logs", job_id, "--address", head.dashboard_url).stdout
    errors = [line for line in logs.splitlines() if line.startswith("culture-rl: error:")]
    assert len(errors) == 1 and "sft.learning_rate" in errors[0], logs[-2000:]
    assert "Traceback" not in logs
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_ppo_job_exports_metrics_and_can_be_stopped(head, quickstart_run, tmp_path):
    config, _ = quickstart_run
    overrides = [f"run.storage_path={tmp_path}", "run.name=jobppo",
                 f"ppo.policy_path={config.run_dir / 'sft' / 'export' / 'model'}",
                 "ppo.max_steps=200", "ppo.rollout_batch_size=8", "ppo.samples_per_prompt=2",
                 "ppo.mini_batch_size=8", "ppo.micro_batch_size=8", "ppo.eval_steps=100",
                 "ppo.save_steps=0"]
    with MetricsScraper(head.metrics_export_port) as scraper:
        submitted = culture_rl("submit", "align_ppo", "--no-wait", "--address",
                               head.dashboard_url, "--config", "configs/quickstart.yaml",
                               *overrides)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submission_id(submitted.stdout)
        deadline = time.time() + 420
        while time.time() < deadline:
            logs = culture_rl("jobs", "logs", job_id, "--address", head.dashboard_url).stdout
            assert job_info(head, job_id).status.value in ("PENDING", "RUNNING"), logs[-3000:]
            if len(re.findall(r"\[ppo\] step [1-9]", logs)) >= 2 and all(
                    scraper.find(name, run="jobppo") for name in (
                        "ray_culture_rl_sync_seconds", "ray_culture_rl_eval_ranking_rho")):
                break
            time.sleep(3)
        else:
            pytest.fail("PPO job made no two steps in time:\n" + logs[-3000:])
        stopped = culture_rl("jobs", "stop", job_id, "--address", head.dashboard_url)
    assert stopped.returncode == 0 and f"job {job_id}: STOPPED" in stopped.stdout, stopped
    assert job_info(head, job_id).status.value == "STOPPED"

    rewards = {tags: values for (name, tags), values in scraper.values.items()
               if name == "ray_culture_rl_reward_mean" and ("run", "jobppo") in tags}
    cultures = {dict(tags)["culture"] for tags in rewards}
    assert config.data.culture in cultures and "all" in cultures, cultures
    assert all(-1 <= v <= 1 for values in rewards.values() for v in values)
    assert all(math.isfinite(v) and v >= 0 for v in scraper.find("ray_culture_rl_kl",
                                                                  run="jobppo"))
    assert all(v > 0 for v in scraper.find("ray_culture_rl_sync_seconds", run="jobppo"))
    # eval_steps > 0: the starting model's held-out ranking rho (step 0).
    assert all(-1 <= v <= 1 for v in scraper.find("ray_culture_rl_eval_ranking_rho",
                                                  run="jobppo"))
    assert all(v > 0 for v in scraper.find("ray_culture_rl_tokens_per_s", run="jobppo"))
    # Prompts a generator has yet to finish: whole numbers, at most a step's or an
    # evaluation's share (the 72 held-out ranking prompts over 2 generators).
    depth = scraper.find("ray_culture_rl_rollout_queue_depth", workflow="rollout")
    assert depth and all(v == int(v) and 0 <= v <= 72 for v in depth), depth


def test_grafana_dashboard_charts_only_series_we_export(quickstart_run):
    """Every series the shipped Grafana dashboard charts is one the jobs above exported, or one
    the evaluation exports (its names computed from a real evaluation report)."""
    from culture_rl.distributed.metrics import gauge_updates
    from culture_rl.eval.harness import evaluation_values

    config, _ = quickstart_run
    results = json.loads((config.run_dir / "eval" / "eval.json").read_text("utf-8"))
    evaluation = {"ray_" + name for name, _, _ in
                  gauge_updates(evaluation_values(results["records"], "sft"), {})}
    dashboard = json.loads((REPO / "cluster" / "grafana" / "culture_rl.json").read_text("utf-8"))
    charted = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"ray_culture_rl_\w+", target["expr"])}
    assert len(charted) >= 10 and SEEN, (charted, SEEN)
    assert charted <= SEEN | evaluation, sorted(charted - SEEN - evaluation)


def test_dashboard_jobs_page_shows_the_jobs_in_a_real_browser(head, tmp_path):
    """A person opens the dashboard, types the cluster's token into its dialog and sees the
    jobs (the earlier tests' and one submitted here)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    job_id = f"culture-rl-browser-{int(time.time())}"
    job_client(head).submit_job(entrypoint="echo culture-rl", submission_id=job_id)
    driver = headless_chromium(tmp_path / "profile")
    try:
        driver.get(f"{head.dashboard_url}/#/jobs")
        body = lambda: driver.find_element(By.TAG_NAME, "body").text  # noqa: E731
        WebDriverWait(driver, 60).until(lambda d: "Authentication Token Required" in body())
        dialog = driver.find_element(By.CSS_SELECTOR, "[role=dialog]")
        dialog.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(auth_token())
        submit = dialog.find_element(By.XPATH, ".//button[contains(translate(normalize-space(.),"
                                               " 'submit', 'SUBMIT'), 'SUBMIT')]")
        WebDriverWait(driver, 10).until(lambda d: submit.is_enabled())  # enabled once typed
        submit.click()
        WebDriverWait(driver, 60).until(
            lambda d: job_id in body() and "Authentication Token Required" not in body())
        driver.save_screenshot(str(tmp_path / "jobs.png"))
        assert "culture-rl-align_sft-jobsft-" in body()  # the first test's job
    finally:
        driver.quit()

