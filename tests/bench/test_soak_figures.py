"""How bench.reliability.soak picks the worst seconds of a run and splits the CPU, and what the
reliability report says of the machine, on made-up outcomes and samples (no server)."""
from __future__ import annotations

import json

from bench.aio_http import Outcome
from bench.reliability.report import _machine, _saturation_after
from bench.reliability.soak import cpu_means, worst_seconds

GOOD_BODY = json.dumps({"model": "m", "trained": True,
                        "predictions": [{"label": "a", "class_index": 0, "probability": 0.9}]}).encode()


def answer(sent: float, latency: float, status: int = 200) -> Outcome:
    return Outcome(sent, latency, status, {}, GOOD_BODY if status == 200 else b'{"code": "overloaded"}')


def cpu_at(t: float, server: float) -> dict[str, float]:
    return {"t": t, "server": server, "generator": 0.1, "others": 0.0, "steal": 0.0, "cores": 2.0}


def test_the_second_with_failures_comes_first_then_the_slowest():
    outcomes = [answer(s + i / 10, 0.02) for s in range(5) for i in range(10)]
    outcomes += [answer(3.5, 0.4), answer(1.2, 0.01, 503), answer(1.3, 0.01, 503), answer(4.1, 0.3)]
    rows = worst_seconds(outcomes, [], t0=0.0, count=3)
    assert [r["second"] for r in rows] == [1, 3, 4]
    assert rows[0]["failed"] == 2 and rows[0]["sent"] == 12
    assert rows[1]["max_ms"] == 400.0


def test_each_worst_second_gets_the_cpu_sample_that_covers_it():
    outcomes = [answer(s + 0.5, 0.02) for s in range(4)] + [answer(2.5, 0.5)]
    cpu = [cpu_at(100.0 + s, server=s / 10) for s in range(1, 6)]  # sample at t0+s covers second s-1
    rows = worst_seconds(outcomes, cpu, t0=100.0, count=1)
    assert rows[0]["second"] == 2 and rows[0]["cpu_cores"]["server"] == 0.3


def test_a_second_after_the_last_sample_has_no_cpu_split():
    rows = worst_seconds([answer(9.5, 0.5)], [cpu_at(105.0, 1.0)], t0=100.0)
    assert "cpu_cores" not in rows[0]


def test_cpu_means():
    means = cpu_means([cpu_at(1.0, 1.0), cpu_at(2.0, 1.5)])
    assert means == {"server": 1.25, "generator": 0.1, "others": 0.0, "steal": 0.0, "cores": 2.0}
    assert cpu_means([]) == {}


def test_a_report_says_when_its_run_was_pinned_to_fewer_cores():
    run = {"started": "t", "machine": {"cpu_model": "Xeon", "cpu_count": 16, "cpu_usable": 2}}
    assert _machine(run) == "Xeon, 16 cores (the run pinned to 2 of them), started t"
    run["machine"]["cpu_usable"] = 16
    assert _machine(run) == "Xeon, 16 cores, started t"
    del run["machine"]["cpu_usable"]  # results written before the field existed
    assert _machine(run) == "Xeon, 16 cores, started t"


def test_the_report_gives_the_soak_rate_as_a_share_of_the_saturation_before_and_after():
    run = {"saturation": {"ok_per_s": 300.0}, "soak": {"rate_per_s": 210.0}, "saturation_after": {"ok_per_s": 250.0}}
    (line,) = _saturation_after(run)
    assert "250.0/s" in line and "70% of the saturation before it and 84% of the one after" in line
    run["saturation_after"] = {"ok_per_s": None, "error": "no good answer at saturation: {'503': 12}"}
    assert _saturation_after(run) == ["- saturation measured again after the soak: none "
                                      "(no good answer at saturation: {'503': 12})"]
    del run["saturation_after"]  # --rate given, or a run from before it was measured
    assert _saturation_after(run) == []


def test_memory_trend_is_the_slope_after_warm_up_in_mib_per_hour():
    from bench.reliability.soak import rss_slope_mib_per_hour

    mib = 2**20
    # 100 MiB flat for 2 minutes of warm-up (a big step up within it), then 1 MiB more per minute, with noise
    warm = [(t, (50 if t < 60 else 100) * mib) for t in range(120)]
    rising = [(120 + t, int((100 + t / 60 + (0.3 if t % 2 else -0.3)) * mib)) for t in range(1800)]
    assert abs(rss_slope_mib_per_hour(warm + rising, start=120) - 60.0) < 0.5
    flat = [(120 + t, 100 * mib + (mib if t % 7 == 0 else 0)) for t in range(1800)]
    assert abs(rss_slope_mib_per_hour(warm + flat, start=120)) < 0.5
    assert rss_slope_mib_per_hour(warm, start=120) is None  # nothing after warm-up to fit
