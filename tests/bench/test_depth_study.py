"""The depth study on a tiny budget: it trains, skips what is done, and reports the gradient story."""
from __future__ import annotations

import json

import pytest

from common.errors import UserError
from bench.depth_study.study import StudyConfig, run_study
from bench.depth_study.report import write_report


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    cfg = StudyConfig(models=("resnet56", "plain56"), epochs=2, train_limit=128, test_limit=64,
                      runs=root / "runs", out=root / "report", latency=None)
    results = run_study(cfg, "test")
    return cfg, results


@pytest.mark.slow
def test_study_reports_curves_gradients_and_table(tiny_study):
    cfg, results = tiny_study
    written = write_report(results, cfg.out)
    assert {p.name for p in written} == {"report.md", "results.json", "training_curves.png", "gradient_norms.png"}
    report = (cfg.out / "report.md").read_text()
    assert "**2 epochs on the first 128 training images**" in report
    assert "| resnet56 | 56 | 0.86 |" in report and "| plain56 | 56 | 0.85 |" in report
    assert "- depth 56: plain test error" in report
    assert "plain56: gradient norm of the first conv over the last conv" in report
    for name in ("resnet56", "plain56"):
        m = results["models"][name]
        assert [h["epoch"] for h in m["history"]] == [1, 2]
        # 55 convs + fc, and resnet56's two 1x1 projections (option B)
        assert len(m["grad_norms"]["init"]) == len(m["grad_norms"]["layers"]) == (58 if name == "resnet56" else 56)
        assert len(m["grad_norms"]["epochs"]) == 2
    saved = json.loads((cfg.out / "results.json").read_text())
    assert "grad_norms" not in saved["models"]["resnet56"]  # the report's JSON stays small


@pytest.mark.slow
def test_study_does_not_retrain_finished_runs(tiny_study):
    cfg, results = tiny_study
    weights = cfg.runs / "resnet56" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = run_study(cfg, "test")
    assert weights.stat().st_mtime_ns == before
    assert again["models"]["resnet56"]["test_accuracy"] == results["models"]["resnet56"]["test_accuracy"]


@pytest.mark.slow
def test_study_refuses_a_finished_run_with_other_settings(tiny_study):
    cfg, _ = tiny_study
    other = StudyConfig(models=("resnet56",), epochs=3, train_limit=128, test_limit=64, runs=cfg.runs,
                        out=cfg.out)
    with pytest.raises(UserError, match="other settings"):
        run_study(other, "test")


def _finished_run(cfg: StudyConfig, model: str) -> None:
    """A run folder as models.train leaves it when finished, without training (metadata from the
    study's own settings, random weights), plus the files that must not be published."""
    from dataclasses import asdict

    from models import create_model
    from models.checkpoint import save_checkpoint
    from bench.depth_study.study import train_config

    tc = train_config(cfg, model)
    meta = {"model": model, "dataset": "fashion-mnist", "num_classes": 10, "class_names": list("abcdefghij"),
            "input_shape": [1, 28, 28], "channel_mode": "L", "mean": [0.5], "std": [0.5], "config": asdict(tc)}
    save_checkpoint(cfg.runs / model, create_model(model, in_channels=1, num_classes=10), meta)
    for extra in ("train_state.pt", "grad_norms.json"):
        (cfg.runs / model / extra).write_text("not published")


@pytest.fixture
def publishable(tmp_path):
    cfg = StudyConfig(models=("resnet20", "plain20"), epochs=1, runs=tmp_path / "runs",
                      checkpoints=tmp_path / "checkpoints", publish=True)
    for model in cfg.models:
        _finished_run(cfg, model)
    return cfg


def test_publish_copies_weights_and_metadata_but_not_over_the_default(publishable):
    from models.checkpoint import load_checkpoint
    from bench.depth_study.study import publish_family

    cfg = publishable
    assert publish_family(cfg) == {"plain20-fmnist": cfg.checkpoints / "plain20-fmnist"}
    dest = cfg.checkpoints / "plain20-fmnist"
    assert sorted(p.name for p in dest.iterdir()) == ["metadata.json", "model.safetensors"]
    assert (dest / "model.safetensors").read_bytes() == (cfg.runs / "plain20" / "model.safetensors").read_bytes()
    assert load_checkpoint(dest)[1]["model"] == "plain20"
    assert sorted(p.name for p in cfg.checkpoints.iterdir()) == ["plain20-fmnist"]  # no resnet20, no staging left
    before = (dest / "model.safetensors").stat().st_mtime_ns
    publish_family(cfg)  # the same weights again: nothing rewritten
    assert (dest / "model.safetensors").stat().st_mtime_ns == before


def test_publish_replaces_a_checkpoint_whole_or_not_at_all(publishable, monkeypatch):
    import shutil

    from bench.depth_study.study import publish_family

    cfg = publishable
    dest = cfg.checkpoints / "plain20-fmnist"
    dest.mkdir(parents=True)
    (dest / "metadata.json").write_text("{}")
    (dest / "stale.txt").write_text("old")
    copy = shutil.copyfile

    def fail_on_metadata(src, dst, *a, **k):
        if str(dst).endswith("metadata.json"):
            raise OSError("disk full")
        return copy(src, dst, *a, **k)

    monkeypatch.setattr(shutil, "copyfile", fail_on_metadata)
    with pytest.raises(OSError, match="disk full"):
        publish_family(cfg)
    assert sorted(p.name for p in cfg.checkpoints.iterdir()) == ["plain20-fmnist"]  # no staging folder left
    assert sorted(p.name for p in dest.iterdir()) == ["metadata.json", "stale.txt"]  # the old one, untouched
    monkeypatch.setattr(shutil, "copyfile", copy)
    publish_family(cfg)
    assert sorted(p.name for p in dest.iterdir()) == ["metadata.json", "model.safetensors"]
    assert sorted(p.name for p in cfg.checkpoints.iterdir()) == ["plain20-fmnist"]


@pytest.mark.parametrize("state", ["unfinished", "other settings", "corrupt"])
def test_publish_refuses_a_run_it_cannot_vouch_for(publishable, state):
    from bench.depth_study.study import publish_family

    cfg = publishable
    run = cfg.runs / "plain20"
    if state == "unfinished":  # training stopped after an epoch: only its resumable state
        (run / "metadata.json").unlink()
        words = "plain20: .* is not a finished run of this study, it has no metadata.json"
    elif state == "other settings":
        cfg.epochs = 2
        words = "plain20: .* is not a finished run of this study, it holds a run with other settings"
    else:
        data = (run / "model.safetensors").read_bytes()
        (run / "model.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        words = "sha256 does not match the metadata"
    with pytest.raises(UserError, match=words):
        publish_family(cfg)
    assert not cfg.checkpoints.exists() or not any(cfg.checkpoints.iterdir())


def test_report_only_reads_finished_family_runs_and_trains_nothing(tmp_path):
    from models.train_family import FamilyConfig, train_family

    runs = tmp_path / "runs"
    train_family(FamilyConfig(models=("resnet20", "plain20"), out=str(runs), device="cpu", epochs=1, train_limit=128,
                              test_limit=64, batch_size=64))
    weights = runs / "resnet20" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    cfg = StudyConfig(models=("resnet20", "plain20", "resnet32"), runs=runs, out=tmp_path / "report", report_only=True)
    with pytest.raises(UserError, match="resnet32 is not a finished run"):
        run_study(cfg, "test")
    cfg.models = ("resnet20", "plain20")
    write_report(run_study(cfg, "test"), cfg.out)
    report = (cfg.out / "report.md").read_text()
    assert "trained by `models.train_family` (all the nets at once, on shared batches)" in report
    assert "**1 epochs on the first 128 training images**" in report and "| plain20 | 20 | 0.27 |" in report
    assert "- depth 20: plain test error" in report
    assert weights.stat().st_mtime_ns == before
