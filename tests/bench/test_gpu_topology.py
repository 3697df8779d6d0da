"""The GPU check's two topologies side by side (bench.gpu.summary, from the first service's classify.json
and the topology stage's)."""
import json

from bench.gpu.summary import cpu_ms_per_request, main, summarize


def _run(users, rate, p50, p99, cores, mode="closed", **extra):
    return {"endpoint": "/classify", "mode": mode, "users": users, "requests_per_s": rate, "images_per_s": rate,
            "requests": 1000, "failures": 0, "p50_ms": p50, "p95_ms": p99 * 0.8, "p99_ms": p99,
            "mean_batch_size": 8.0, "cpu": {"service_cores": cores, "generator_cores": 3.0}, **extra}


def _classify(topology, runs, duration=9.0):
    return {"service_env": {"RESNET_DEVICE": "cuda", "RESNET_TOPOLOGY": topology}, "settings": {"duration": duration},
            "runs": runs}


def _section(text):
    start = text.index("### Topologies side by side")
    return text[start:text.index("### Depth sweep")]


def test_cpu_per_request_is_the_services_cores_over_its_rate():
    assert cpu_ms_per_request(_run(32, 2000.0, 10.0, 20.0, 8.0)) == 4.0
    assert cpu_ms_per_request({"requests_per_s": 0.0, "cpu": {"service_cores": 1.0}}) is None
    assert cpu_ms_per_request({"requests_per_s": 10.0, "cpu": {}}) is None


def test_both_topologies_side_by_side_and_the_faster(tmp_path):
    first = _classify("shared-engine", [
        _run(1, 300.0, 3.1, 4.0, 1.5), _run(128, 5000.0, 24.0, 45.0, 10.0), _run(256, 5600.0, 44.0, 90.0, 11.2),
        _run(512, 3900.0, 9.0, 14.0, 8.0, mode="open", offered_rate=3920.0, open_rate_spec="70%")])
    second = _classify("per-worker", [
        _run(1, 330.0, 2.9, 3.8, 1.2), _run(128, 6000.0, 20.0, 40.0, 12.0),
        {"endpoint": "/classify", "mode": "closed", "users": 256, "error": "locust failed"}], duration=7.0)
    (tmp_path / "a.json").write_text(json.dumps(first))
    (tmp_path / "b.json").write_text(json.dumps(second))
    text = summarize(None, None, None, classify_path=tmp_path / "a.json", classify_other_path=tmp_path / "b.json")
    assert "- Topology (RESNET_TOPOLOGY): shared-engine for every stage but `topology`, which ran per-worker" in text
    section = _section(text)
    assert "Each cell: **shared-engine** / **per-worker**; 7 s and 9 s per run" in section
    assert "| 1 | 300.0 / 330.0 | +10% | 3.10 / 2.90 | 4.00 / 3.80 | 1.5 / 1.2 | 5.00 / 3.64 |" in section
    assert "| 128 | 5,000.0 / 6,000.0 | +20% | 24.00 / 20.00 | 45.00 / 40.00 | 10.0 / 12.0 | 2.00 / 2.00 |" in section
    assert "| 256 | 5,600.0 / – | – | 44.00 / – | 90.00 / – | 11.2 / – | 2.00 / – |" in section  # B's run failed
    assert "| 512 |" not in section  # the open loop is not compared
    assert ("- Higher best throughput: **per-worker**, 6,000.0 req/s (128 users) against shared-engine's 5,600.0 "
            "(256 users): +7%") in section
    assert "- Best within /classify's p99 <= 50 ms: shared-engine 5,000.0 req/s (128 users); per-worker 6,000.0" in section
    # the rest of the summary is as before: the targets are judged on the first service alone
    assert "best 5,600 images/s at p99 90.0 ms (256 users); within the p99: 5,000 (128 users)" in text


def test_the_other_topology_missing_is_not_measured(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(_classify("per-worker", [_run(1, 20.0, 40.0, 60.0, 0.9)])))
    assert main(["--classify", str(tmp_path / "a.json"), "--classify-other", str(tmp_path / "missing.json"),
                 "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "per-worker for every stage but `topology`, the other topology not measured" in text
    section = _section(text)
    assert "shared-engine: not measured (no closed-loop run from the topology stage)" in section
    assert "| 1 | 20.0 / – | – |" in section and "Higher best throughput" not in section
    assert "Not measured: no closed-loop /classify run from either service" in _section(summarize(None, None, None))


def test_a_dry_run_says_its_winner_is_a_cpu_figure(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_classify("per-worker", [_run(2, 40.0, 45.0, 70.0, 1.8)])))
    (tmp_path / "b.json").write_text(json.dumps(_classify("shared-engine", [_run(2, 25.0, 75.0, 110.0, 1.9)])))
    section = _section(summarize(None, None, None, dry_run=True, classify_path=tmp_path / "a.json",
                                 classify_other_path=tmp_path / "b.json"))
    assert ("**per-worker**, 40.0 req/s (2 users) against shared-engine's 25.0 (2 users): +60% "
            "(CPU dry run: says nothing of the GPU's choice)") in section
    assert "- Best within /classify's p99 <= 50 ms: per-worker none; shared-engine none" in section
