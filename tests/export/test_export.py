"""python -m export: verified ONNX in three precisions, the model card inside and beside, the store."""
import json
import os
import stat

import numpy as np
import onnx
import pytest
import torch

from export import verify
from export.__main__ import main as export_main
from export.onnx_io import INPUT_NAME, cpu_session, op_counts, read_embedded_metadata
from export.pipeline import ExportConfig, export_model
from export.store import find_registered
from models.card import ModelCard
from models.data import load_fashion_mnist
from models.evaluate import to_input


@pytest.fixture(scope="module")
def resnet20_export(tmp_path_factory, default_checkpoint):
    out = tmp_path_factory.mktemp("export")
    result = export_model(ExportConfig(checkpoint=default_checkpoint, precisions=["fp32", "fp16", "int8"],
                                       out=out, register=True))
    return out, result


def test_files_and_metadata(resnet20_export):
    out, result = resnet20_export
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"resnet20-fmnist.{p}.{ext}" for p in ("fp32", "fp16", "int8") for ext in ("onnx", "json"))
    for precision, path in result.files.items():
        beside = json.loads(path.with_suffix(".json").read_text())
        inside = read_embedded_metadata(path)
        assert {k: v for k, v in beside.items() if k != "onnx_sha256"} == inside
        assert ModelCard.from_dict(beside) == result.cards[precision]
        assert inside["precision"] == precision and inside["name"] == "resnet20-fmnist"
        assert inside["depth"] == 20 and inside["trained"] is True and inside["test_accuracy"] == 94.55
        assert inside["class_names"][9] == "Ankle boot" and inside["input_shape"] == [1, 28, 28]
        assert inside["channel_mode"] == "L" and len(inside["mean"]) == 1
        assert inside["folding"]["convs_before"] == 21 and inside["folding"]["convs_after"] == 21
        assert inside["folding"]["merge_projections"] is False and inside["folding"]["batchnorms_after"] == 0
        assert len(inside["source"]["sha256"]) == 64 and inside["opset"] >= 17


def test_graph_interface_and_no_batchnorm(resnet20_export):
    _, result = resnet20_export
    for path in result.files.values():
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert "BatchNormalization" not in op_counts(path)
    assert op_counts(result.files["int8"]).get("QuantizeLinear", 0) > 0


def test_onnx_equals_pytorch_on_real_images(resnet20_export, default_checkpoint):
    from models.checkpoint import load_checkpoint

    _, result = resnet20_export
    model, meta = load_checkpoint(default_checkpoint)
    images, _ = load_fashion_mnist("test")
    x = to_input(torch.from_numpy(images[:100])[:, None], meta["mean"], meta["std"])
    with torch.no_grad():
        ref = model.double()(x.double()).numpy()
    batch_sizes = {1: x[:1], 7: x[:7], 100: x}  # the batch dimension is dynamic
    for n, xb in batch_sizes.items():
        out = cpu_session(result.files["fp32"]).run(None, {INPUT_NAME: xb.numpy()})[0]
        assert out.shape == (n, 10)
        assert np.abs(out - ref[:n]).max() / np.abs(ref[:n]).max() < 1e-5


def test_verification_figures_recorded(resnet20_export):
    _, result = resnet20_export
    fp32, fp16, int8 = (result.cards[p].verification for p in ("fp32", "fp16", "int8"))
    assert fp32["rel_error_random"] <= 1e-5 and fp32["rel_error_real"] <= 1e-5
    assert fp16["rel_error_real"] <= 5e-3
    assert int8["top1_agreement"] >= 99.0 and int8["calibration_images"] >= 512
    assert abs(int8["test_accuracy"] - int8["fp32_test_accuracy"]) <= 0.5


def test_registered_in_store(resnet20_export):
    import bentoml

    _, result = resnet20_export
    stored = bentoml.models.get(result.tag)
    assert stored.info.labels["depth"] == "20" and stored.info.labels["precision"] == "fp16,fp32,int8"
    assert stored.info.labels["accuracy"] == "94.55" and stored.info.labels["dataset"] == "fashion-mnist"
    assert os.environ["BENTOML_HOME"] in stored.path
    for p in ("fp32", "fp16", "int8"):
        assert os.path.isfile(stored.path_of(f"model.{p}.onnx"))
    sha = result.cards["fp32"].provenance.sha256
    assert find_registered("resnet20-fmnist", sha, ["fp32", "int8"]) is not None
    assert find_registered("resnet20-fmnist", "0" * 64, ["fp32"]) is None


def test_failed_verification_leaves_nothing_behind(tmp_path, default_checkpoint, monkeypatch):
    import bentoml

    monkeypatch.setitem(verify.TOLERANCE, "fp32", 1e-12)  # no real export can pass this
    before = {str(m.tag) for m in bentoml.models.list()}
    (tmp_path / "keep.txt").write_text("already here")
    with pytest.raises(verify.VerificationError, match="relative error"):
        export_model(ExportConfig(checkpoint=default_checkpoint, out=tmp_path, register=True))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert {str(m.tag) for m in bentoml.models.list()} == before


def test_torchvision_state_dict_loads_and_exports(tmp_path):
    fixture = json.loads((__import__("pathlib").Path(__file__).parents[1] / "fixtures"
                          / "torchvision_resnet_state_dicts.json").read_text())["models"]["resnet18"]
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape, dtype in fixture:
        if dtype != "float32":
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * (0.05 if key.endswith("weight") else 0.1)
    weights = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, weights)
    result = export_model(ExportConfig(model="resnet18", torchvision_weights=weights, out=tmp_path / "o",
                                       verify_random=2, verify_real=2))
    card = result.cards["fp32"]
    assert card.name == "resnet18-imagenet" and card.trained is True and card.num_classes == 1000
    assert card.class_names[0] == "tench" and card.resize == 256 and card.channel_mode == "RGB"
    assert card.provenance.kind == "torchvision-weights" and card.folding["convs_after"] == 20


@pytest.mark.parametrize("argv,needle", [
    (["--model", "resnet19"], "unknown model 'resnet19'"),
    (["--model", "resnet20"], "CIFAR-family model"),
    (["--model", "resnet18", "--precision", "fp8"], "unknown precision fp8"),
])
def test_bad_arguments_are_one_line_errors(argv, needle, tmp_path, capsys):
    assert export_main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_checkpoint_of_another_architecture(tmp_path, default_checkpoint, capsys):
    weights = tmp_path / "r20.pth"
    from safetensors.torch import load_file
    torch.save(load_file(str(default_checkpoint / "model.safetensors")), weights)
    assert export_main(["--model", "resnet50", "--torchvision-weights", str(weights), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit" in err and "missing: " in err and "shape mismatch: conv1.weight (16, 1, 3, 3)" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("seed", range(12))
def test_unreadable_weights_file(tmp_path, capsys, seed):
    # Random bytes make torch's unpickler fail in many ways (UnpicklingError, IndexError, ...):
    # seeded, so a failure repeats; os.urandom once let an IndexError through as a traceback.
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(np.random.default_rng(seed).bytes(300))
    assert export_main(["--model", "resnet18", "--torchvision-weights", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a readable PyTorch state_dict" in err and len(err.splitlines()) == 1


def test_unwritable_output(tmp_path, default_checkpoint, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    target = locked / "sub"
    if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "sub"
    assert export_main(["--checkpoint", str(default_checkpoint), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert "output folder" in err and len(err.splitlines()) == 1


def test_default_model_is_idempotent(default_checkpoint, caplog):
    from export.default_model import ensure_default_model

    caplog.set_level("INFO")
    first = ensure_default_model()
    assert ensure_default_model() == first
    assert "already in the BentoML store" in caplog.text


def test_merged_projections_export_verifies(tmp_path, default_checkpoint):
    result = export_model(ExportConfig(checkpoint=default_checkpoint, out=tmp_path, merge_projections=True))
    card = result.cards["fp32"]
    assert card.folding["convs_after"] == 19 and card.folding["merged_projections"] == 2
    assert card.verification["rel_error_real"] <= 1e-5
    assert op_counts(result.files["fp32"])["Conv"] == 19
