"""The Ray Train controller's settings around one fit (culture_rl/distributed/train_settings.py):
timeouts from the config, the preemption watcher off on a single node, the user's variables win."""

from culture_rl.config import ResourcesConfig
from culture_rl.distributed.train_settings import (HEALTH_CHECK_TIMEOUT_ENV,
                                                   PREEMPTION_WATCHER_ENV,
                                                   WORKER_START_TIMEOUT_ENV,
                                                   train_controller_env)


def test_timeouts_come_from_the_config_with_defaults_longer_than_rays(monkeypatch):
    for name in (WORKER_START_TIMEOUT_ENV, HEALTH_CHECK_TIMEOUT_ENV, PREEMPTION_WATCHER_ENV):
        monkeypatch.delenv(name, raising=False)
    env = train_controller_env(ResourcesConfig(), single_node=True)
    assert env == {WORKER_START_TIMEOUT_ENV: "600", HEALTH_CHECK_TIMEOUT_ENV: "600",
                   PREEMPTION_WATCHER_ENV: "0"}
    env = train_controller_env(ResourcesConfig(worker_start_timeout_s=90.5,
                                               health_check_timeout_s=1200), single_node=False)
    assert env == {WORKER_START_TIMEOUT_ENV: "90.5", HEALTH_CHECK_TIMEOUT_ENV: "1200"}


def test_the_preemption_watcher_stays_on_where_nodes_can_be_drained(monkeypatch):
    monkeypatch.delenv(PREEMPTION_WATCHER_ENV, raising=False)
    assert PREEMPTION_WATCHER_ENV not in train_controller_env(ResourcesConfig(), False)
    assert PREEMPTION_WATCHER_ENV not in train_controller_env(
        ResourcesConfig(autoscaling=True), True)


def test_a_variable_the_user_set_wins(monkeypatch):
    monkeypatch.setenv(WORKER_START_TIMEOUT_ENV, "30")
    monkeypatch.setenv(PREEMPTION_WATCHER_ENV, "1")
    env = train_controller_env(ResourcesConfig(), single_node=True)
    assert WORKER_START_TIMEOUT_ENV not in env and PREEMPTION_WATCHER_ENV not in env
    assert env[HEALTH_CHECK_TIMEOUT_ENV] == "600"
