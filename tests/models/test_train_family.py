"""models.train_family on a few hundred real Fashion-MNIST images, on the CPU: nets trained at once
end as models.train leaves each alone, in the same files; a run stopped at its deadline resumes;
the 110-layer warm-up; the epoch count from a measured epoch time; bad flags."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from models import family_net
from models import train_family as tf
from models.family_plan import Warmup, choose_epochs, compile_pays, rechoose_epochs
from models.train import TrainConfig, train
from models.train_family import FamilyConfig, train_family
from models.train_family import main as family_main

TINY = dict(train_limit=256, test_limit=64, batch_size=64)  # 4 steps an epoch


def _family(out, models=("resnet20",), **kw) -> FamilyConfig:
    return FamilyConfig(**{"models": models, "out": str(out), "device": "cpu", **TINY, **kw})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """resnet20 and plain20 trained at once, and resnet20 alone by models.train with the same recipe."""
    root = tmp_path_factory.mktemp("family")
    record = train_family(_family(root / "family", ("resnet20", "plain20"), epochs=2), command="pytest family")
    train(TrainConfig(model="resnet20", out=str(root / "alone"), epochs=2, schedule="step", warmup_epochs=0,
                      grad_norms=True, device="cpu", **TINY), command="pytest alone")
    return root / "family", root / "alone", record


def test_a_net_trained_beside_another_ends_as_models_train_leaves_it_alone(pair):
    family, alone, _ = pair
    mine, theirs = (json.loads((d / "metadata.json").read_text()) for d in (family / "resnet20", alone))
    assert mine.keys() == theirs.keys()
    assert [r.keys() for r in mine["history"]] == [r.keys() for r in theirs["history"]]
    assert set(theirs["config"]) <= set(mine["config"])  # the family adds its warm-up and precision
    for a, b in zip(mine["history"], theirs["history"]):
        keys = ("train_loss", "test_error", "lr")
        assert [a[k] for k in keys] == pytest.approx([b[k] for k in keys])
    assert mine["test_accuracy"] == theirs["test_accuracy"]
    w_mine, w_theirs = load_file(family / "resnet20" / "model.safetensors"), load_file(alone / "model.safetensors")
    assert all(torch.allclose(w_mine[k], w_theirs[k], atol=1e-6) for k in w_theirs)
    g_mine, g_theirs = (json.loads((d / "grad_norms.json").read_text()) for d in (family / "resnet20", alone))
    assert g_mine.keys() == g_theirs.keys() and g_mine["init"] == pytest.approx(g_theirs["init"])
    state = torch.load(family / "resnet20" / "train_state.pt", weights_only=True)
    assert set(torch.load(alone / "train_state.pt", weights_only=True)) <= set(state)
    assert mine["command"] == "pytest family" and mine["epochs"] == 2
    assert mine["environment"]["device"].startswith("cpu") and mine["config"]["precision"] == "fp32"


def test_the_family_record_holds_each_net_its_probe_and_the_call(pair):
    family, _, record = pair
    assert json.loads((family / tf.FAMILY_FILE).read_text()) == json.loads(json.dumps(record))
    assert record["finished"] and record["epochs"] == 2 and record["calls"][-1]["status"] == "finished"
    assert set(record["probes"][0]["net_epoch_s"]) == {"resnet20", "plain20"}
    assert [len(record["nets"][m]["history"]) for m in ("resnet20", "plain20")] == [2, 2]
    assert (family / "plain20" / "metadata.json").is_file()


def test_a_run_stopped_at_its_deadline_resumes_where_it_stopped(tmp_path, monkeypatch):
    clock, trained = {"t": 0.0}, []
    real_end = family_net.FamilyNet.end_epoch

    def end_epoch(self, epoch, *args):  # each epoch "takes" 100 s of the deadline's clock
        real_end(self, epoch, *args)
        clock["t"] += 100.0
        trained.append(epoch + 1)

    monkeypatch.setattr(tf, "_now", lambda: clock["t"])
    monkeypatch.setattr(family_net.FamilyNet, "end_epoch", end_epoch)
    first = train_family(_family(tmp_path / "r", epochs=3, deadline_s=150.0))
    assert trained == [1] and first["calls"][-1]["status"] == "deadline" and not first["finished"]
    assert not (tmp_path / "r" / "resnet20" / "metadata.json").exists()
    clock["t"] = 0.0
    resumed = train_family(_family(tmp_path / "r", epochs=3), resume=True)
    assert trained == [1, 2, 3]  # epoch 1 was not trained again
    assert [c["status"] for c in resumed["calls"]] == ["deadline", "finished"]
    whole = train_family(_family(tmp_path / "u", epochs=3))
    a, b = load_file(tmp_path / "r/resnet20/model.safetensors"), load_file(tmp_path / "u/resnet20/model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    meta = json.loads((tmp_path / "r/resnet20/metadata.json").read_text())
    assert meta["command"].count("python -m models.train_family") == 2  # both calls, in order


def test_a_compiled_net_trains_as_the_eager_one(pair, tmp_path, monkeypatch):
    real_compile = torch.compile  # dynamo's capture run eagerly: the wrapper's path, without inductor's minutes
    monkeypatch.setattr(family_net.torch, "compile", lambda model, mode: real_compile(model, backend="eager"))
    record = train_family(_family(tmp_path / "c", epochs=2, compile="on"))
    assert record["nets"]["resnet20"]["compiled"] and "--compile on" in record["compile"]["decision"]
    eager = load_file(pair[0] / "resnet20" / "model.safetensors")
    compiled = load_file(tmp_path / "c" / "resnet20" / "model.safetensors")
    assert compiled.keys() == eager.keys() and all(torch.allclose(compiled[k], eager[k], atol=1e-5) for k in eager)


def test_warmup_rule():
    w = Warmup(lr=0.01, below=80.0)
    assert w.learning_rate(0.1) == 0.01
    assert not w.check(49, wrong=45, seen=50) and w.active  # 90% wrong: still warming up
    assert w.check(99, wrong=35, seen=50) and w.ended_at_step == 99  # 70%: back to the schedule
    assert w.learning_rate(0.1) == 0.1 and not w.check(149, wrong=0, seen=50)


@pytest.mark.parametrize("until, ended", [(100.0, 1), (0.0, None)])
def test_deep_nets_warm_up_at_0_01_until_their_error_falls(tmp_path, monkeypatch, until, ended):
    used = []
    real_step = family_net.train_step
    monkeypatch.setattr(family_net, "train_step",
                        lambda m, o, x, y, lr, *a: used.append(lr) or real_step(m, o, x, y, lr, *a))
    train_family(_family(tmp_path / "w", epochs=4, warmup_min_depth=20, warmup_until_error=until, warmup_check_steps=2))
    schedule = [0.1] * 8 + [0.01] * 4 + [0.001] * 4  # 16 steps: /10 at 50% and 75%
    expected = [0.01, 0.01] + schedule[2:] if ended == 1 else [min(0.01, s) for s in schedule]
    assert used == pytest.approx(expected)
    config = json.loads((tmp_path / "w/resnet20/metadata.json").read_text())["config"]
    assert config["warmup_ended_at_step"] == ended and config["warmup_lr"] == 0.01


def test_epoch_count_from_a_measured_epoch_time_and_budget():
    assert choose_epochs(epoch_s=10, budget_s=100) == 10
    assert choose_epochs(epoch_s=10, budget_s=109) == 10  # whole epochs only
    assert choose_epochs(epoch_s=10, budget_s=100, spent_s=25, done_epochs=2) == 9
    assert choose_epochs(epoch_s=10, budget_s=5) == 1
    assert choose_epochs(epoch_s=10, budget_s=100, spent_s=200, done_epochs=3.2) == 4  # the epoch under way ends
    assert rechoose_epochs(current=20, wanted=12, done_steps=500, steps_per_epoch=100) == 12
    assert rechoose_epochs(current=20, wanted=8, done_steps=500, steps_per_epoch=100) == 10  # rates so far kept
    assert rechoose_epochs(current=8, wanted=20, done_steps=500, steps_per_epoch=100) == 8  # past the first /10


def test_compile_pays_only_when_the_saving_exceeds_the_compile_time():
    assert compile_pays(saving_per_step_s=0.01, compile_s=50, steps_left=10_000)
    assert not compile_pays(saving_per_step_s=0.01, compile_s=200, steps_left=10_000)
    assert not compile_pays(saving_per_step_s=-0.01, compile_s=0, steps_left=10_000)


@pytest.mark.parametrize("flags", [["--compile", "maybe"], ["--models", "resnet20,resnet50"], ["--models", "nosuch"],
                                   ["--epochs", "0"], ["--train-limit", "-1"], ["--models", "resnet20,resnet20"]])
def test_a_bad_flag_is_one_line_and_exit_status_2(tmp_path, capsys, flags):
    assert family_main(["--out", str(tmp_path / "f"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "f").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, capsys):
    assert family_main(["--out", str(tmp_path / "f"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_an_existing_run_needs_resume_and_the_same_recipe(pair, capsys):
    family, _, _ = pair
    tiny = ["--device", "cpu", "--models", "resnet20,plain20", "--train-limit", "256", "--test-limit", "64",
            "--batch-size", "64", "--epochs", "2", "--out", str(family)]
    assert family_main(tiny) == 2 and "pass --resume" in capsys.readouterr().err
    assert family_main([*tiny, "--resume", "--lr", "0.2"]) == 2 and "different recipe" in capsys.readouterr().err
