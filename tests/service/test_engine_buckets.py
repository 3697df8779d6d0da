"""GPU-only logic reachable on the CPU: batch buckets (service/engine.py), the fallback when CUDA is
listed but cannot load, and the choices made for CUDA (precision, topology, threads), run with the
real default model on the CPU provider."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

import service.catalog
import service.engine
from service.catalog import resolve_precision
from service.config import load_config
from service.engine import CPU, EngineOptions, OnnxEngine, bucket_sizes, cuda_usable, pad_to_bucket
from service.topology import PER_WORKER, SHARED_ENGINE, resolve_topology

INPUT = (1, 28, 28)  # the default model's input (Fashion-MNIST)


# ---- buckets, directly ---------------------------------------------------------------------------

@pytest.mark.parametrize("max_batch, sizes", [
    (1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (8, [1, 2, 4, 8]), (12, [1, 2, 4, 8, 12]),
    (32, [1, 2, 4, 8, 16, 32]),
])
def test_bucket_sizes_are_powers_of_two_and_the_max(max_batch, sizes):
    assert bucket_sizes(max_batch) == sizes


@pytest.mark.parametrize("n, padded", [(1, 1), (3, 4), (5, 8), (7, 8), (9, 12), (12, 12)])
def test_a_batch_is_padded_with_zero_images_to_the_smallest_bucket_that_holds_it(n, padded):
    images = np.random.default_rng(n).uniform(1, 2, (n, *INPUT)).astype(np.float32)
    out = pad_to_bucket(images, [1, 2, 4, 8, 12])
    assert out.shape == (padded, *INPUT) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:n], images)  # the batch itself, first and untouched
    assert not out[n:].any()  # then zeros only


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_a_batch_the_size_of_a_bucket_is_left_as_it_is(n):
    images = np.ones((n, *INPUT), np.float32)
    assert pad_to_bucket(images, [1, 2, 4, 8]) is images


def test_a_batch_over_the_largest_bucket_is_left_as_it_is():
    images = np.ones((11, *INPUT), np.float32)
    assert pad_to_bucket(images, [1, 2, 4, 8]) is images


def test_padding_keeps_the_dtype():
    images = np.ones((3, *INPUT), np.float16)
    out = pad_to_bucket(images, [1, 2, 4])
    assert out.dtype == np.float16 and out.shape == (4, *INPUT)


# ---- a real engine with buckets on the CPU -------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_path(default_model_tag) -> Path:
    import bentoml

    return Path(bentoml.models.get(default_model_tag).path_of("model.fp32.onnx"))


@pytest.fixture(scope="module")
def plain(onnx_path) -> OnnxEngine:
    return OnnxEngine(onnx_path, EngineOptions(device="cpu", threads=1, max_batch_size=8))


class SessionSpy:
    """The engine's onnxruntime session, unchanged, noting the batch size of each run."""

    def __init__(self, session) -> None:
        self.session, self.batches = session, []

    def run(self, outputs, feeds):
        [x] = feeds.values()
        self.batches.append(len(x))
        return self.session.run(outputs, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


@pytest.fixture
def bucketed(onnx_path) -> OnnxEngine:
    engine = OnnxEngine(onnx_path, EngineOptions(device="cpu", threads=1, max_batch_size=8, pad_to_buckets=True))
    engine.session = SessionSpy(engine.session)
    return engine


def test_buckets_are_off_on_the_cpu_unless_asked(plain):
    assert plain.provider == CPU and plain.on_cuda is False and plain.buckets == []


@pytest.mark.parametrize("n, ran", [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (6, 8), (7, 8), (8, 8), (11, 11)])
def test_padded_batches_answer_exactly_what_unpadded_ones_do(plain, bucketed, n, ran):
    assert bucketed.buckets == [1, 2, 4, 8] and bucketed.provider == CPU
    images = np.random.default_rng(n).standard_normal((n, *INPUT)).astype(np.float32)
    logits = bucketed.infer(images)
    assert bucketed.session.batches == [ran]  # padded to its bucket (11: over the largest, as is)
    assert logits.shape == (n, 10)  # the padding's rows are never answered
    np.testing.assert_allclose(logits, plain.infer(images), rtol=1e-5, atol=1e-5)


def test_warm_up_runs_each_bucket(bucketed, plain):
    bucketed.warm_up(INPUT)
    assert bucketed.session.batches == [1, 2, 4, 8]
    spy = SessionSpy(plain.session)
    plain.session = spy
    try:
        plain.warm_up(INPUT)
    finally:
        plain.session = spy.session
    assert spy.batches == [1, 8]  # without buckets: one image and the largest batch


# ---- CUDA listed, but unusable ---------------------------------------------------------------------

@pytest.fixture
def cuda_listed_but_unloadable(monkeypatch):
    """What a GPU host whose CUDA or cuDNN libraries are missing looks like to the service: the CUDA
    provider listed and a device present, but onnxruntime unable to load the provider."""
    if cuda_usable():
        pytest.skip("this machine can use CUDA: there is no fallback to see")
    monkeypatch.setattr(service.engine, "cuda_usable", lambda: True)


def test_a_cuda_provider_that_cannot_load_falls_back_to_the_cpu_and_says_so(onnx_path, plain, caplog,
                                                                            cuda_listed_but_unloadable):
    caplog.set_level(logging.WARNING, logger="service.engine")
    engine = OnnxEngine(onnx_path, EngineOptions(device="auto", threads=1, max_batch_size=8))
    assert engine.provider == CPU and engine.on_cuda is False
    assert engine.buckets == [] and engine.cuda_graphs is False  # CUDA's padding stays off on the CPU
    warnings = [r for r in caplog.records if r.name == "service.engine" and r.levelno == logging.WARNING]
    assert warnings and all("CUDA" in r.getMessage() and onnx_path.name in r.getMessage() for r in warnings)
    images = np.random.default_rng(0).standard_normal((3, *INPUT)).astype(np.float32)
    np.testing.assert_allclose(engine.infer(images), plain.infer(images), rtol=1e-5, atol=1e-5)


def test_the_cpu_fallback_keeps_the_configured_threads(onnx_path, cuda_listed_but_unloadable):
    engine = OnnxEngine(onnx_path, EngineOptions(device="auto", threads=1))
    assert engine.provider == CPU
    assert engine.session.get_session_options().intra_op_num_threads == 1


def test_the_cpu_engine_has_the_configured_threads(plain):
    assert plain.session.get_session_options().intra_op_num_threads == 1


def test_device_cuda_without_a_usable_device_refuses_to_start(onnx_path, monkeypatch):
    monkeypatch.setattr(service.engine, "cuda_usable", lambda: False)
    with pytest.raises(RuntimeError, match="RESNET_DEVICE=cuda but no usable CUDA device"):
        OnnxEngine(onnx_path, EngineOptions(device="cuda"))


# ---- what is chosen for CUDA ---------------------------------------------------------------------

@pytest.mark.parametrize("on_cuda, precision", [(True, "fp16"), (False, "fp32")])
def test_auto_precision_is_fp16_on_cuda_and_fp32_elsewhere(on_cuda, precision):
    assert resolve_precision(load_config({"RESNET_PRECISION": "auto"}), on_cuda=on_cuda) == precision


@pytest.mark.parametrize("setting", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("on_cuda", [True, False])
def test_an_explicit_precision_is_kept(setting, on_cuda):
    assert resolve_precision(load_config({"RESNET_PRECISION": setting}), on_cuda=on_cuda) == setting


@pytest.mark.parametrize("device, precision", [("auto", "fp16"), ("cpu", "fp32")])
def test_auto_precision_asks_the_machine_unless_the_device_is_the_cpu(monkeypatch, device, precision):
    monkeypatch.setattr(service.catalog, "cuda_usable", lambda: True)
    assert resolve_precision(load_config({"RESNET_DEVICE": device})) == precision
    monkeypatch.setattr(service.catalog, "cuda_usable", lambda: False)
    assert resolve_precision(load_config({"RESNET_DEVICE": device})) == "fp32"


@pytest.mark.parametrize("setting, on_cuda, topology", [
    ("auto", False, PER_WORKER), ("auto", True, SHARED_ENGINE),
    (PER_WORKER, True, PER_WORKER), (PER_WORKER, False, PER_WORKER),
    (SHARED_ENGINE, True, SHARED_ENGINE), (SHARED_ENGINE, False, SHARED_ENGINE),
])
def test_topology_auto_follows_the_device_and_an_explicit_one_is_kept(setting, on_cuda, topology):
    assert resolve_topology(setting, on_cuda) == topology


def test_topology_setting_is_parsed_and_a_bad_one_named():
    assert load_config({}).topology == "auto"
    for value in ("auto", PER_WORKER, SHARED_ENGINE):
        assert load_config({"RESNET_TOPOLOGY": value}).topology == value
    with pytest.raises(ValueError, match="RESNET_TOPOLOGY='gpu': choose from auto, per-worker, shared-engine"):
        load_config({"RESNET_TOPOLOGY": "gpu"})


def test_engine_threads_setting_wins_both_ways():
    config = load_config({"RESNET_ENGINE_THREADS": "3", "RESNET_API_WORKERS": "2"})
    assert config.engine_threads == 3
    assert config.threads_per_session(per_worker=True) == 3
    assert config.threads_per_session(per_worker=False) == 3
    assert config.threads_per_session(per_worker=True, input_pixels=224 * 224) == 3
    assert EngineOptions.from_config(config, per_worker=True).threads == 3
    assert EngineOptions.from_config(config, per_worker=False).threads == 3


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_engine_threads_setting_is_named(value):
    with pytest.raises(ValueError, match="RESNET_ENGINE_THREADS"):
        load_config({"RESNET_ENGINE_THREADS": value})


def test_auto_engine_threads_share_the_cores_between_per_worker_sessions(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    config = load_config({"RESNET_ENGINE_THREADS": "auto", "RESNET_API_WORKERS": "2"})
    assert config.engine_threads is None and config.cores == 4
    assert config.threads_per_session(per_worker=True) == 2  # each of 2 workers: its share
    assert config.threads_per_session(per_worker=False) == 4  # the shared engine: every core
    assert EngineOptions.from_config(config, per_worker=True).threads == 2
    assert EngineOptions.from_config(config).threads == 4
