"""service/config.py: what the service's settings default to."""
from __future__ import annotations

import os

import pytest

from service.config import BatchSettings, load_config, usable_cores
from service.engine import EngineOptions


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
    assert config.api_workers == 2 and config.engine_threads is None  # auto:
    assert config.threads_per_session(per_worker=True) == 1  # each of 2 workers' sessions, a core each
    assert config.threads_per_session(per_worker=False) == 2  # the shared engine's one session


def test_a_setting_still_overrides_the_cpu_count(sixteen_cores_pinned_to_two, monkeypatch):
    monkeypatch.setenv("RESNET_API_WORKERS", "3")
    assert load_config().api_workers == 3



SERVED = {"RESNET_MODELS": "resnet20-fmnist:abc123,resnet110-fmnist"}


def test_per_model_batch_settings_override_the_global_defaults():
    config = load_config({**SERVED, "RESNET_MAX_BATCH_SIZE": "16", "RESNET_MODEL_SETTINGS":
                          '{"resnet110-fmnist": {"max_batch_size": 8, "max_latency_ms": 200}}'})
    assert config.batch_settings("resnet110-fmnist") == BatchSettings(max_batch_size=8, max_latency_ms=200)
    assert config.batch_settings("resnet20-fmnist") == BatchSettings(max_batch_size=16, max_latency_ms=1000)
    partial = load_config({**SERVED, "RESNET_MODEL_SETTINGS": '{"resnet20-fmnist": {"max_latency_ms": 50}}'})
    assert partial.batch_settings("resnet20-fmnist") == BatchSettings(max_batch_size=32, max_latency_ms=50)
    # the engine's CUDA buckets follow the model's own max batch size
    assert EngineOptions.from_config(config, "resnet110-fmnist").max_batch_size == 8
    assert EngineOptions.from_config(config).max_batch_size == 16


def test_models_take_an_optional_store_version():
    config = load_config(SERVED)
    assert config.models == ("resnet20-fmnist", "resnet110-fmnist") and config.default_model == "resnet20-fmnist"
    assert config.version("resnet20-fmnist") == "abc123" and config.version("resnet110-fmnist") is None


@pytest.mark.parametrize("env, message", [
    ({"RESNET_MODEL_SETTINGS": "{resnet20-fmnist: 8}"}, "RESNET_MODEL_SETTINGS is not valid JSON"),
    ({"RESNET_MODEL_SETTINGS": "[8]"}, "must be a JSON object"),
    ({"RESNET_MODEL_SETTINGS": '{"resnet56-fmnist": {"max_batch_size": 8}}'},
     "RESNET_MODEL_SETTINGS['resnet56-fmnist']: not a served model"),
    ({"RESNET_MODEL_SETTINGS": '{"resnet20-fmnist": {"max_batch": 8}}'},
     "RESNET_MODEL_SETTINGS['resnet20-fmnist']: unknown key 'max_batch'"),
    ({"RESNET_MODEL_SETTINGS": '{"resnet20-fmnist": {"max_batch_size": 0}}'}, ".max_batch_size=0: expected an integer"),
    ({"RESNET_MODEL_SETTINGS": '{"resnet20-fmnist": {"max_latency_ms": 2.5}}'}, ".max_latency_ms=2.5: expected"),
    ({"RESNET_MODEL_SETTINGS": '{"resnet20-fmnist": {"max_batch_size": true}}'}, ".max_batch_size=true: expected"),
    ({"RESNET_MODEL_SETTINGS": '{"resnet20-fmnist": 8}'}, "must be an object with max_batch_size"),
    ({"RESNET_MODELS": "resnet20-fmnist:"}, "entry 'resnet20-fmnist:': expected NAME or NAME:VERSION"),
    ({"RESNET_MODELS": "resnet20-fmnist:ABC"}, "expected NAME or NAME:VERSION"),
    ({"RESNET_MODELS": "resnet20-fmnist,resnet20-fmnist:abc"}, "names 'resnet20-fmnist' twice"),
])
def test_bad_model_settings_are_one_clear_error(env, message):
    with pytest.raises(ValueError) as e:
        load_config({**SERVED, **env})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_malloc_trim_interval_defaults_to_30_s_and_0_turns_it_off():
    assert load_config(SERVED).malloc_trim_s == 30.0
    assert load_config({**SERVED, "RESNET_MALLOC_TRIM_S": "0"}).malloc_trim_s == 0.0
    with pytest.raises(ValueError, match="RESNET_MALLOC_TRIM_S"):
        load_config({**SERVED, "RESNET_MALLOC_TRIM_S": "-1"})
