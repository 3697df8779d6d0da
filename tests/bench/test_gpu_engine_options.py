"""RESNET_CUDA_GRAPHS / RESNET_PREFER_NHWC: parsed, passed to the engine, and inert on the CPU."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from service.config import load_config
from service.engine import CPU, EngineOptions, OnnxEngine, cuda_provider_options


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("RESNET_CUDA_GRAPHS", "RESNET_PREFER_NHWC", "RESNET_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_both_off_by_default(clean_env):
    config = load_config()
    assert config.cuda_graphs is False and config.prefer_nhwc is False


@pytest.mark.parametrize("graphs, nhwc", [("on", "off"), ("off", "on"), ("on", "on")])
def test_on_off_parsed_and_passed_to_the_engine(clean_env, graphs, nhwc):
    clean_env.setenv("RESNET_CUDA_GRAPHS", graphs)
    clean_env.setenv("RESNET_PREFER_NHWC", nhwc)
    clean_env.setenv("RESNET_MAX_BATCH_SIZE", "16")
    options = EngineOptions.from_config(load_config())
    assert (options.cuda_graphs, options.prefer_nhwc) == (graphs == "on", nhwc == "on")
    assert options.max_batch_size == 16 and options.device == "auto"


@pytest.mark.parametrize("name", ["RESNET_CUDA_GRAPHS", "RESNET_PREFER_NHWC"])
@pytest.mark.parametrize("value", ["yes", "1", "ON", "true"])
def test_anything_but_on_or_off_is_refused(clean_env, name, value):
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}={value!r}: choose from on, off"):
        load_config()


def test_provider_options_unchanged_unless_asked():
    assert cuda_provider_options(0) == {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE",
                                        "do_copy_in_default_stream": True}
    both = cuda_provider_options(1, prefer_nhwc=True, cuda_graph=True)
    assert both["device_id"] == 1 and both["prefer_nhwc"] == "1" and both["enable_cuda_graph"] == "1"
    assert "enable_cuda_graph" not in cuda_provider_options(0, prefer_nhwc=True)


@pytest.fixture(scope="module")
def pooling_model(tmp_path_factory):
    """images (N, 3, 8, 8) -> logits (N, 3): the per-channel mean, a model small enough to build here."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["logits"], axis=1)],
        "pool", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])])
    path = tmp_path_factory.mktemp("engine") / "pool.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(path))
    return path


def test_cpu_engine_ignores_the_cuda_options(pooling_model):
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8), dtype=np.float32)
    plain = OnnxEngine(pooling_model, EngineOptions(device="cpu", threads=1))
    asked = OnnxEngine(pooling_model, EngineOptions(device="cpu", threads=1, cuda_graphs=True, prefer_nhwc=True))
    assert asked.provider == CPU and asked.cuda_graphs is False and asked.prefer_nhwc is False
    assert asked.buckets == [] and asked.warm_up((3, 8, 8)) >= 0
    np.testing.assert_allclose(asked.infer(x), x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(asked.infer(x), plain.infer(x))
