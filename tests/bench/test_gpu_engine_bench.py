"""bench.gpu: target verdicts, the summary, the variants, and the engine bench's CPU dry run end to end."""
import dataclasses
import json
import time

import pytest

from bench.gpu import environment
from bench.gpu.bench_report import evaluate_targets, peak_share, target_summary
from bench.gpu.engine_bench import BenchConfig, _guarded, main
from bench.gpu.runners import BASELINE, FAMILY_VARIANTS, VARIANTS, ort_session, time_calls
from bench.gpu.summary import summarize


def _ok(ms, batch, device="cuda", numerics_ok=True):
    return {"status": "ok", "device": device, "median_ms": ms, "images_per_s": batch / ms * 1000,
            "numerics_ok": numerics_ok, "rel_err_vs_cpu_fp32": 1e-3}


def _results(cells_by_model):
    return {"machine": {"card": "test card"}, "models": {
        name: {"depth": 18, "gflops_per_image": 8.2, "batches": {str(b): cells for b, cells in batches.items()}}
        for name, batches in cells_by_model.items()}}


def test_targets_take_the_fastest_fp16_output_that_passed_numerics():
    results = _results({
        "resnet18": {64: {BASELINE: _ok(12.0, 64), "ort_fp16": _ok(10.0, 64), "ort_fp16_nhwc": _ok(8.0, 64),
                          # fastest, but its output was wrong: not counted
                          "ort_fp16_graph": _ok(2.0, 64, numerics_ok=False), "ort_fp32": _ok(1.0, 64)},
                     1: {BASELINE: _ok(3.0, 1), "ort_fp16_graph": _ok(1.5, 1)}},
        "resnet50": {64: {BASELINE: _ok(11.0, 64), "ort_fp16": _ok(10.0, 64)},
                     1: {BASELINE: {"status": "failed: RuntimeError: x"}, "ort_fp16": _ok(1.0, 1)}},
    })
    rows = {(r["batch"], r["model"]): r for r in evaluate_targets(results)}
    met = rows[(64, "resnet18")]
    assert met["best"] == "ort_fp16_nhwc" and met["ratio"] == pytest.approx(1.5) and met["verdict"] == "met"
    assert met["plain_ratio"] == pytest.approx(1.2) and met["margin_pct"] == pytest.approx(25.0)
    missed = rows[(64, "resnet50")]
    assert missed["verdict"] == "missed" and missed["ratio"] == pytest.approx(1.1)
    assert missed["margin_pct"] == pytest.approx(100 * (1.1 / 1.2 - 1)) and missed["ort_ms_needed"] == pytest.approx(11 / 1.2)
    assert rows[(1, "resnet18")]["verdict"] == "missed" and rows[(1, "resnet18")]["ratio"] == pytest.approx(2.0)
    assert rows[(1, "resnet50")]["verdict"].startswith("not measured: failed")
    assert rows[(256, "resnet50")]["verdict"] == "not measured: batch 256 not in this run"
    lines = target_summary(list(rows.values()))  # judged on resnet50, every depth counted beside it
    assert lines[0].endswith("batch 64, resnet50: **missed** (1.10x, -8%); every depth: 1 of 2 met, 2 judged")
    assert "batch 256, resnet50: **not measured** (batch 256 not in this run); every depth: 0 of 2 met" in lines[1]
    assert "batch 1, resnet50: **not measured** (failed: RuntimeError: x); every depth: 0 of 2 met, 1 judged" in lines[2]


def test_cpu_figures_are_never_judged():
    results = _results({"resnet18": {1: {BASELINE: _ok(3.0, 1, device="cpu"), "ort_fp16": _ok(0.1, 1, device="cpu")}}})
    rows = evaluate_targets(results)
    assert [r["verdict"] for r in rows] == ["not measured: batch 64 not in this run",
                                            "not measured: batch 256 not in this run",
                                            "not evaluated: no CUDA figures (CPU dry run)"]
    assert "resnet50 not in this run" in target_summary(rows)[2]
    assert peak_share(results, "resnet18") is None  # CPU figures are no share of a card's peak


def test_peak_share_of_the_fastest_cuda_figure_that_passed_numerics():
    results = _results({"resnet50": {64: {"ort_fp16": _ok(2.0, 64), "ort_fp16_graph": _ok(1.0, 64, numerics_ok=False)},
                                     256: {"ort_fp16_nhwc": _ok(6.4, 256), BASELINE: _ok(3.0, 256, device="cpu")}}})
    share = peak_share(results, "resnet50")
    assert (share["variant"], share["batch"]) == ("ort_fp16_nhwc", 256) and share["images_per_s"] == pytest.approx(40000)
    assert share["ceiling_images_per_s"] == pytest.approx(989e3 / 8.2)  # ~120,600 images/s
    assert share["share"] == pytest.approx(40000 * 8.2 / 989e3) and share["achieved_tflops"] == pytest.approx(328)


def test_time_calls_counts():
    calls = []
    assert len(time_calls(lambda: calls.append(1), warmup=2, repeats=7, max_seconds=1e9)) == 7
    assert len(calls) == 2 + 1 + 7  # warm-up, the estimate, the timed calls
    assert len(time_calls(lambda: None, warmup=0, repeats=30, max_seconds=0.0)) == 10  # capped, at least 10
    assert len(time_calls(lambda: None, warmup=0, repeats=3, max_seconds=0.0)) == 3


def test_variants():
    assert len(VARIANTS) == 14 and VARIANTS[BASELINE].runtime == "torch" and VARIANTS[BASELINE].nhwc
    assert next(iter(VARIANTS)) == BASELINE  # first within each batch: a target needs it
    assert sorted(k for k, v in VARIANTS.items() if v.cuda_only) == sorted(
        [f"ort_{p}_{o}" for p in ("fp16", "fp32") for o in ("nhwc", "graph", "nhwc_graph")]
        + [f"ort_fp16{o}_ws0" for o in ("", "_nhwc", "_graph", "_nhwc_graph")])
    assert VARIANTS["ort_fp16_nhwc_graph_ws0"].label == "ORT fp16 NHWC + CUDA graph, max workspace off"
    assert {VARIANTS[k].workspace for k in VARIANTS} == {None, 0} and set(FAMILY_VARIANTS) <= set(VARIANTS)
    cfg = BenchConfig(variants=["ort_fp16", "ort_fp16_nhwc", BASELINE])
    assert cfg.variants_for("resnet50") == ["ort_fp16", "ort_fp16_nhwc", BASELINE]
    assert cfg.variants_for("plain56") == ["ort_fp16", BASELINE]  # the family: FAMILY_VARIANTS only


def test_workspace_option_reaches_the_cuda_provider(monkeypatch, tmp_path):
    """ort_session's CUDA provider options: the service's, plus cudnn_conv_use_max_workspace when set."""
    import bench.gpu.runners as runners

    seen = []

    class Session:
        def __init__(self, path, so, providers):
            seen.append(providers)

        def get_providers(self):
            return ["CUDAExecutionProvider"]

    monkeypatch.setattr(runners.ort, "InferenceSession", Session)
    ort_session(tmp_path / "m.onnx", "cuda", workspace=0)
    ort_session(tmp_path / "m.onnx", "cuda", nhwc=True, graph=True)
    assert seen[0][0][1]["cudnn_conv_use_max_workspace"] == "0"
    assert "cudnn_conv_use_max_workspace" not in seen[1][0][1]  # the provider's default (1)
    assert seen[1][0][1]["prefer_nhwc"] == "1" and seen[1][0][1]["enable_cuda_graph"] == "1"


def test_refuses_to_run_on_a_machine_without_cuda_unless_dry(tmp_path, capsys):
    if environment.cuda_missing_reason() is None:
        pytest.skip("this machine has CUDA")
    assert main(["--out", str(tmp_path), "--models", "resnet18"]) == 2
    assert "no usable CUDA for onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_a_family_net_whose_fp16_fails_verification_is_exported_in_fp32(monkeypatch, tmp_path):
    """resnet110-fmnist's fp16 file fails its gate (docs/decisions/009): its fp32 cells still run."""
    from export.verify import VerificationError

    asked = []

    def export(name, precisions, onnx_dir, register):
        asked.append(list(precisions))
        if "fp16" in precisions:
            raise VerificationError("resnet110-fmnist.fp16.onnx: relative error 7.45e-03 on random inputs")
        card = dataclasses.replace(environment.bench_source(name).card, verification={"rel_error_random": 1e-7})
        return {"fp32": tmp_path / "x.fp32.onnx"}, {"fp32": card}, None

    monkeypatch.setattr(environment, "_export", export)
    monkeypatch.setattr(environment, "_reusable", lambda name, files: None)
    row = environment.export_one("resnet110", tmp_path, register=False)
    assert asked == [["fp32", "fp16"], ["fp32"]] and row["status"] == "ok" and list(row["files"]) == ["fp32"]
    assert row["missing"] == {"fp16": "fp16 export failed its verification: resnet110-fmnist.fp16.onnx: "
                                      "relative error 7.45e-03 on random inputs"}
    asked.clear()
    assert environment.export_one("resnet50", tmp_path, register=False)["status"].startswith("failed: Verification")
    assert asked == [["fp32", "fp16"]]  # an ImageNet export is never half done


def test_family_nets_need_a_committed_checkpoint(tmp_path, capsys):
    assert main(["--dry-run", "--out", str(tmp_path), "--models", "resnet18,plain110"]) == 2
    assert "plain110: no committed checkpoint" in capsys.readouterr().err
    environment.check_models(["resnet50", "resnet110", "plain56"])  # committed: accepted


def test_past_its_deadline_a_stage_is_skipped_not_run():
    ran = []
    assert _guarded(time.monotonic() - 1, lambda: ran.append(1) or {}) == {"status": "skipped: time budget"}
    assert _guarded(None, lambda: {"x": 1}) == {"status": "ok", "x": 1} and not ran
    assert _guarded(None, lambda: 1 / 0)["status"] == "failed: ZeroDivisionError: division by zero"


def test_unknown_variant(tmp_path, capsys):
    assert main(["--dry-run", "--out", str(tmp_path), "--variants", "ort_fp16,ort_int8"]) == 2
    assert "unknown variant ort_int8" in capsys.readouterr().err


DRY_VARIANTS = ["ort_fp32", "ort_fp16", "ort_fp16_nhwc", "ort_fp16_graph", "ort_fp16_ws0", BASELINE, "torch_fp32"]


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    """resnet18 exported and verified, timed on the CPU provider; CUDA-only variants skipped, no
    figure claims CUDA, no target is judged, and every report says it is a CPU dry run; the family
    net resnet20 from its committed checkpoint at 28x28, at the family's variants (~30 s)."""
    out = tmp_path / "out"
    assert main(["--dry-run", "--out", str(out), "--onnx-dir", str(tmp_path / "onnx"), "--batches", "1",
                 "--repeats", "2", "--warmup", "0", "--variants", ",".join(DRY_VARIANTS)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dry_run"] is True and results["complete"] is True and results["device"] == "cpu"
    model = results["models"]["resnet18"]
    cells = model["batches"]["1"]
    assert sorted(cells) == sorted(DRY_VARIANTS)
    for key, cell in cells.items():
        if VARIANTS[key].cuda_only:
            assert cell["status"].startswith("skipped:")
        else:
            assert cell["status"] == "ok" and cell["device"] == "cpu" and cell["calls"] == 2
            assert cell["numerics_ok"], (key, cell["rel_err_vs_cpu_fp32"])
    assert cells["ort_fp32"]["rel_err_vs_cpu_fp32"] < 1e-5  # the same CPU provider as the reference
    assert model["numerics"]["fp16"]["ok"] and model["numerics"]["fp16"]["provider"] == "CPUExecutionProvider"
    assert {r["verdict"].split(":")[0] for r in results["targets"]} == {"not measured", "not evaluated"}
    check = results["engine_check"]
    assert check["status"] == "ok" and check["engines"]["cuda_graphs"]["cuda_graphs_active"] is False
    assert check["engines"]["default"]["batches"]["1"]["numerics_ok"]
    profile = results["profile"]
    assert profile["status"] == "ok" and {r["variant"] for r in profile["runs"].values()} == {"ort_fp16", BASELINE}
    assert profile["runs"][f"{BASELINE}@1"]["top"]  # PyTorch's CPU operators were recorded
    report = (out / "report.md").read_text()
    assert "CPU DRY RUN" in report and "skipped: " in report and "ORT fp32 NHWC" not in report  # not selected
    assert (out / "engine_bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in (tmp_path / "onnx").iterdir()} >= {"resnet18-imagenet.fp32.onnx",
                                                                 "resnet18-imagenet.fp16.onnx",
                                                                 "resnet20-fmnist.fp16.onnx"}
    family = results["models"]["resnet20"]
    assert family["served"] == "resnet20-fmnist" and family["input_shape"] == [1, 28, 28]
    assert sorted(family["batches"]["1"]) == sorted(set(DRY_VARIANTS) & set(FAMILY_VARIANTS))
    assert family["batches"]["1"]["ort_fp16"]["numerics_ok"] and family["gflops_per_image"] == pytest.approx(0.062, 0.01)
    assert results["exports"]["resnet20"]["how"] == "exported" and "## resnet20-fmnist (28x28" in report


def test_report_and_plot_of_cuda_results(tmp_path):
    """The paths a CPU dry run never takes (judged targets, GPU busy time, every OnnxEngine option)
    render from a results dict shaped like a GPU run's; a report bug must not waste a device call."""
    from bench.gpu.bench_report import write_outputs

    def cells(batch, baseline_ms):
        out = {k: _ok(baseline_ms / (1.5 if v.runtime == "ort" else 1.0), batch) for k, v in VARIANTS.items()}
        out[BASELINE] = _ok(baseline_ms, batch)
        out["ort_fp32_nhwc_graph"] = {"status": "refused: asked for CUDA, onnxruntime runs on ['CPUExecutionProvider']"}
        return out

    versions = {"onnxruntime": "1.31.1", "torch": "2.x", "torch_cuda": "13.0", "cudnn": 91000, "onnx": "1",
                "numpy": "2", "python": "3.12"}
    engine = {"status": "ok", "provider": "CUDAExecutionProvider", "cuda_graphs_active": True,
              "prefer_nhwc_active": False, "warm_up_s": 2.0,
              "batches": {"1": {"median_ms": 1.0, "images_per_s": 1000.0, "numerics_ok": True}}}
    results = {
        "dry_run": False, "complete": True, "wall_seconds": 100.0,
        "machine": {"card": "NVIDIA H100 80GB HBM3", "nvidia_smi": "NVIDIA H100 80GB HBM3, 81559 MiB",
                    "torch_device_name": "NVIDIA H100 80GB HBM3", "cpu_model": "cpu", "cpu_count": 16,
                    "platform": "linux", "versions": versions, "ort_providers": ["CUDAExecutionProvider"]},
        "settings": {"command": "python -m bench.gpu.engine_bench", "timing": "t", "repeats": 30,
                     "max_cell_seconds": 1.5, "warmup": 5, "inputs": "i", "ort": {}, "torch": {}},
        "exports": {"resnet50": {"status": "ok", "verification": {"fp32": {"rel_error_random": 1e-7,
                                                                          "rel_error_real": 1e-7}}},
                    "resnet152": {"status": "failed: VerificationError: too far"}},
        "models": {"resnet50": {"depth": 50, "nhwc_graph_domains": {"com.ms.internal.nhwc": 53},
                                "batches": {"1": cells(1, 3.0), "64": cells(64, 6.0)},
                                "numerics": {"fp32": {"status": "ok", "provider": "CUDAExecutionProvider",
                                                      "rel_err_vs_cpu_fp32": 2e-3, "top1_agreement_pct": 100.0,
                                                      "tolerance": 1e-2, "ok": True}}}},
        "engine_check": {"status": "ok", "model": "resnet50", "precision": "fp16",
                         "engines": {"default": {**engine, "cuda_graphs_active": False},
                                     "cuda_graphs": engine, "nhwc": {"status": "skipped: time budget"}}},
        "profile": {"status": "ok", "model": "resnet50", "calls": 20, "runs": {"ort_fp16@1": {
            "variant": "ort_fp16", "batch": 1, "device_busy_ms_per_call": 0.5, "device_ops_per_call": 60.0,
            "top": [{"name": "sm90_xmma_fprop_implicit_gemm", "ms_per_call": 0.2, "share": 0.4}]}}},
    }
    paths = write_outputs(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert [p.name for p in paths] == ["results.json", "report.md", "engine_bench.png"]
    assert "on NVIDIA H100 80GB HBM3" in report and "DRY RUN" not in report
    assert "| 64 | resnet50 | ORT fp16 | 4.000 | 6.000 | 1.50x (1.50x) | 1.2x | **met** (+25%) |" in report
    assert "**missed** (-40%; needs ORT <= 1.200 ms)" in report  # batch 1: 1.5x against 2.5x
    assert "| 2.000 | 0.500 | 25% | 60 |" in report  # timed 2 ms, GPU busy 0.5 ms per call
    assert "refused: asked for CUDA" in report and "resnet152: failed: VerificationError" in report
    assert "| nhwc | skipped: time budget |" in report and "com.ms.internal.nhwc" in report


def test_summary_reads_a_stopped_sweeps_locust_csvs(tmp_path):
    raw = tmp_path / "raw" / "batching-on-auto"
    raw.mkdir(parents=True)
    head = "Type,Name,Request Count,Failure Count,Requests/s,50%,99%\n"
    (raw / "resnet50-imagenet_closed_u8_stats.csv").write_text(
        head + "POST,classify,900,3,30.5,210,480\n,Aggregated,900,3,30.5,210,480\n")
    (raw / "resnet50-imagenet_closed_u8_stats_history.csv").write_text(head)  # not a stats file
    text = summarize(None, None, tmp_path / "results.json", dry_run=True, sweep_raw=tmp_path / "raw")
    assert "CPU DRY RUN" in text and "read back from the raw Locust CSVs" in text
    assert "| resnet50-imagenet | ? | closed | 8 | 30.5 | 210.0 | – | 480.0 | 3 | – |" in text
