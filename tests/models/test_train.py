"""Training smoke runs on a few hundred real Fashion-MNIST images, and the evaluate CLI."""
import json

import pytest
import torch

from models import train as train_mod
from models.checkpoint import load_checkpoint
from models.evaluate import evaluate_checkpoint
from models.evaluate import main as evaluate_main
from models.train import TrainConfig, learning_rate, train
from models.train import main as train_main

SMOKE = dict(model="resnet20", epochs=3, batch_size=64, lr=0.05, train_limit=512, test_limit=256, warmup_epochs=0.5)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "resnet20"
    meta = train(TrainConfig(out=str(out), grad_norms=True, **SMOKE), command="pytest smoke")
    return out, meta


def test_training_lowers_the_loss_and_writes_a_checkpoint(smoke_run):
    out, meta = smoke_run
    losses = [row["train_loss"] for row in meta["history"]]
    assert losses[-1] < losses[0] * 0.9
    model, loaded = load_checkpoint(out)
    assert loaded["test_accuracy"] == meta["test_accuracy"] and loaded["command"] == "pytest smoke"
    assert loaded["train_images"] == 512 and loaded["epochs"] == 3
    result = evaluate_checkpoint(out, limit=256)
    assert result["accuracy"] == pytest.approx(meta["test_accuracy"], abs=1e-6)


def test_gradient_norms_recorded_per_layer(smoke_run):
    out, _ = smoke_run
    log = json.loads((out / "grad_norms.json").read_text())
    assert log["layers"][0] == "conv1.weight" and log["layers"][-1] == "fc.weight"
    assert len(log["init"]) == len(log["layers"]) and len(log["epochs"]) == 3
    assert all(v > 0 for v in log["init"])


def test_refuses_to_overwrite_a_run_without_resume(smoke_run):
    out, _ = smoke_run
    assert train_main(["--model", "resnet20", "--out", str(out), "--epochs", "1"]) == 2


def test_resume_continues_from_the_last_epoch(tmp_path, monkeypatch):
    cfg = TrainConfig(out=str(tmp_path / "r"), **{**SMOKE, "epochs": 2})
    calls = []
    real_save = train_mod._atomic_torch_save

    def save_then_stop(obj, path):  # simulate a kill right after epoch 1 was saved
        real_save(obj, path)
        calls.append(obj["epoch"])
        if obj["epoch"] == 1 and len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_atomic_torch_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    resumed = train(cfg, resume=True)
    assert calls == [1, 2]  # epoch 1 was not trained twice
    uninterrupted = train(TrainConfig(out=str(tmp_path / "u"), **{**SMOKE, "epochs": 2}))
    assert [r["train_loss"] for r in resumed["history"]] == pytest.approx(
        [r["train_loss"] for r in uninterrupted["history"]], rel=1e-5)
    a, b = load_checkpoint(tmp_path / "r")[0], load_checkpoint(tmp_path / "u")[0]
    assert torch.allclose(a.fc.weight, b.fc.weight, atol=1e-5)


def test_resume_with_other_settings_is_refused(tmp_path):
    out = str(tmp_path / "r")
    train(TrainConfig(out=out, **{**SMOKE, "epochs": 1}))
    assert train_main(["--model", "resnet20", "--out", out, "--epochs", "1", "--lr", "0.3", "--resume"]) == 2


def test_schedules():
    cfg = TrainConfig(epochs=10, lr=0.1, warmup_epochs=1)
    assert learning_rate(cfg, 0, 100) == pytest.approx(0.001)
    assert learning_rate(cfg, 100, 100) == pytest.approx(0.1)
    assert learning_rate(cfg, 999, 100) < 1e-4
    step = TrainConfig(epochs=10, lr=0.1, warmup_epochs=0, schedule="step")
    assert [learning_rate(step, s, 100) for s in (0, 500, 750)] == pytest.approx([0.1, 0.01, 0.001])


@pytest.mark.parametrize("argv,needle", [
    (["--model", "resnet19", "--out", "x"], "unknown model 'resnet19'"),
    (["--model", "resnet20", "--out", "x", "--epochs", "0"], "must be positive"),
])
def test_train_cli_bad_input_is_one_line(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_evaluate_cli_reproduces_the_default_checkpoint_accuracy(default_checkpoint, caplog):
    # The bar: within 0.1 points of the accuracy recorded at training time.
    caplog.set_level("INFO")
    assert evaluate_main([str(default_checkpoint), "--tolerance", "0.1"]) == 0
    assert "on 10000 images" in caplog.text and "difference" in caplog.text


def test_evaluate_cli_bad_checkpoint(tmp_path, capsys):
    assert evaluate_main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint not found") and len(err.splitlines()) == 1
