"""The depth study on a tiny budget: it trains, skips what is done, and reports the gradient story."""
from __future__ import annotations

import json

import pytest

from models.errors import UserError
from models.study import StudyConfig, run_study
from models.study_report import write_report


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
