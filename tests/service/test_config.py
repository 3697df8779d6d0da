"""service/config.py: what the service's settings default to."""
from __future__ import annotations

import os

import pytest

from service.config import load_config, usable_cores


@pytest.fixture
def sixteen_cores_pinned_to_two(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    for name in ("RESNET_API_WORKERS", "RESNET_ENGINE_THREADS"):
        monkeypatch.delenv(name, raising=False)


def test_workers_and_threads_default_to_the_cpus_this_process_may_use(sixteen_cores_pinned_to_two):
    # under taskset -c 0,1 (or a container's cpuset) on a 16-core host: 2 workers, not 16
    config = load_config()
    assert usable_cores() == 2
    assert config.api_workers == 2 and config.engine_threads == 2


def test_a_setting_still_overrides_the_cpu_count(sixteen_cores_pinned_to_two, monkeypatch):
    monkeypatch.setenv("RESNET_API_WORKERS", "3")
    assert load_config().api_workers == 3

