"""``reports/reliability/report.md`` from whichever results files the reliability runs left there
(``overload.json``, ``soak.json``, ``faults.json``, ``fuzz.json``): every figure in it is read from
those files, which the commands named in each section wrote.

    python -m bench.reliability.report [--out reports/reliability]
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.cli import run_cli
from common.files import ensure_writable_dir

log = logging.getLogger(__name__)


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"


def _sec(v: float | None) -> str:
    return "never (within the run)" if v is None else f"{v:.1f} s"


def _mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} MiB"


def _checks(criteria: dict[str, Any]) -> list[str]:
    return [f"- {'PASS' if ok else '**FAIL**'}: {name}" for name, ok in criteria["checks"].items()]


def _machine(r: dict[str, Any]) -> str:
    m = r["machine"]
    busy = m.get("cpu_busy_before")
    other = f"; other tenants kept {busy:.0%} of the CPU busy just before" if busy is not None else ""
    usable = m.get("cpu_usable", m["cpu_count"])
    pinned = f" (the run pinned to {usable} of them)" if usable < m["cpu_count"] else ""
    return f"{m['cpu_model']}, {m['cpu_count']} cores{pinned}, started {r.get('started', '?')}{other}"


def _recovery(rec: dict[str, Any]) -> str:
    return (f"Recovery: from {_sec(rec['recovery_s'])} after the load dropped, every {rec['window_s']:g} s window of "
            f"answers was all good 200s with a median within the saturation p50 ({_ms(rec['healthy_median_within_ms'])}); "
            + (f"no answer was slower than the saturation p99 ({_ms(rec['slow_over_ms'])}) or not a good 200."
               if rec["last_slow_answer_s"] is None else
               f"the last answer slower than the saturation p99 ({_ms(rec['slow_over_ms'])}) or not a good 200 was "
               f"sent {rec['last_slow_answer_s']:.1f} s after the drop."))


def _admission(c: dict[str, Any]) -> str:
    target = c["admit_target_ms"]
    adaptive = f", fewer while admitted requests average over {target} ms (RESNET_ADMIT_TARGET_MS)" if target else ""
    wait = c["admit_wait_ms"]
    waiting = (f"; beyond that a request waits up to {wait} ms for a slot, behind at most {c['max_inflight']} others "
               f"(RESNET_ADMIT_WAIT_MS)" if wait else "; beyond that 503 at once")
    return (f"admission: at most {c['max_inflight']} requests in progress in each of {c['api_workers']} API workers "
            f"(RESNET_MAX_INFLIGHT){adaptive}{waiting}")


def overload_section(r: dict[str, Any]) -> list[str]:
    s, o, rec, c = r["saturation"], r["overload"], r["recovery"], r["config"]
    return [
        "## Overload", "",
        f"`python -m bench.reliability.overload` ({_machine(r)}; {_admission(c)}, Retry-After {c['retry_after_s']} s).", "",
        "| phase | offered | good answers/s | 503 (with Retry-After) | other | p50 | p99 | max | resident memory (max) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| saturation, {r['settings']['clients']} closed-loop clients, {r['settings']['saturation_seconds']:g} s | "
        f"closed loop | {s['ok_per_s']:.1f} | {s['shed_503']} ({s['shed_with_retry_after']}) | "
        f"{s['sent'] - s['ok'] - s['shed_503']} | {_ms(s['ok_latency']['p50_ms'])} | {_ms(s['ok_latency']['p99_ms'])} | "
        f"{_ms(s['ok_latency']['max_ms'])} | {_mib(s['memory']['max_mib'])} |",
        f"| overload {r['settings']['factor']:g}x, {r['settings']['overload_seconds']:g} s | {o['offered_per_s']:.0f}/s "
        f"({o['sent']} requests) | {o['ok_per_s']:.1f} | {o['shed_503']} ({o['shed_with_retry_after']}) | "
        f"{r['criteria']['other_outcomes']} | {_ms(o['ok_latency']['p50_ms'])} | {_ms(o['ok_latency']['p99_ms'])} | "
        f"{_ms(o['ok_latency']['max_ms'])} | {_mib(o['memory_thirds'][-1]['max_mib'])} |",
        f"| recovery, {r['settings']['recovery_seconds']:g} s | {rec['rate_per_s']:.0f}/s ({rec['sent']} requests) | "
        f"{rec['ok_per_s']:.1f} | {rec['shed_503']} ({rec['shed_with_retry_after']}) | "
        f"{rec['sent'] - rec['ok'] - rec['shed_503']} | {_ms(rec['ok_latency']['p50_ms'])} | "
        f"{_ms(rec['ok_latency']['p99_ms'])} | {_ms(rec['ok_latency']['max_ms'])} | {_mib(rec['memory_after']['max_mib'])} |",
        "",
        f"Under overload, accepted p99 {_ms(o['ok_latency_first_third']['p99_ms'])} in the first third of the window "
        f"and {_ms(o['ok_latency_last_third']['p99_ms'])} in the last; 503s answered in p99 "
        f"{_ms(o['shed_latency']['p99_ms'])}. Resident memory of the whole process tree, max per third "
        f"of the window: {', '.join(_mib(m['max_mib']) for m in o['memory_thirds'])}. {_recovery(rec)} "
        f"The load generator used {o['load_generator_cores']:.2f} cores of the same machine. Refusal capacity "
        f"(requests answered at once with a 4xx, 32 closed-loop clients, 5 s): {r['refusal_capacity_per_s']:.0f}/s, "
        f"against {o['offered_per_s'] - s['ok_per_s']:.0f}/s that overload offers beyond saturation.", "",
        *_checks(r["criteria"]), "",
    ]


def _saturation_after(r: dict[str, Any]) -> list[str]:
    after = r.get("saturation_after")
    if after is None:  # --rate given, or results written before it was measured
        return []
    if not after.get("ok_per_s"):
        return [f"- saturation measured again after the soak: none ({after.get('error', 'no good answer')})"]
    rate = r["soak"]["rate_per_s"]
    return [f"- saturation measured again right after the soak, the same way: {after['ok_per_s']:.1f}/s; the soak's "
            f"rate was {rate / r['saturation']['ok_per_s']:.0%} of the saturation before it and "
            f"{rate / after['ok_per_s']:.0%} of the one after"]


def soak_section(r: dict[str, Any]) -> list[str]:
    s, c = r["soak"], r["config"]
    lines = [
        "## Soak", "",
        f"`python -m bench.reliability.soak` ({_machine(r)}): {r['settings']['fraction']:.0%} of a saturation rate of "
        f"{r['saturation']['ok_per_s']:.1f}/s measured in the same run ({r['settings']['clients']} closed-loop clients), "
        f"that is {s['rate_per_s']:.1f} requests/s for {s['seconds'] / 60:.1f} min, open loop; {_admission(c)}.", "",
        f"- requests sent {s['sent']}, good 200s {s['ok']}, failed {s['failed']} ({s['by_status']})"
        + (f"; 503s by who shed them: {s['shed_reasons']}" if s.get("shed_reasons") else ""),
        f"- latency of good answers: p50 {_ms(s['ok_latency']['p50_ms'])}, p99 {_ms(s['ok_latency']['p99_ms'])}, "
        f"max {_ms(s['ok_latency']['max_ms'])}",
        *_saturation_after(r),
        f"- resident memory of the process tree: {_mib(s['rss_after_warmup_mib'])} after "
        f"{r['settings']['warmup_seconds']:g} s of warm-up, {_mib(s['rss_end_mib'])} at the end, max "
        f"{_mib(s['rss_max_mib'])}: growth {s['rss_growth']:+.2%}"
        + (f"; trend after warm-up (least-squares line through every 1-s sample) {s['rss_slope_mib_per_hour']:+.2f} MiB per hour"
           if s.get("rss_slope_mib_per_hour") is not None else ""),
        "", "| minute | sent | good | p99 | resident memory |", "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {m['minute']} | {m['sent']} | {m['ok']} | {_ms(m['p99_ms'])} | {_mib(m['rss_mib'])} |"
              for m in s["per_minute"]]
    if s.get("cpu_cores_mean"):
        m = s["cpu_cores_mean"]
        lines += ["", f"Where the machine's {m['cores']:.1f} cores went, on average over the run (sampled each second): "
                      f"the service {m['server']:.2f} cores, the load generator {m['generator']:.2f}, other processes "
                      f"{m['others']:.2f}, steal (the hypervisor) {m['steal']:.2f}. The worst seconds (most failed "
                      f"requests, then the slowest answer), with the same split in that second:", "",
                  "| second | sent | failed | p50 | max | service | generator | others | steal |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for w in s["worst_seconds"]:
            c = w.get("cpu_cores", {})
            cores = " | ".join(f"{c[k]:.2f}" if k in c else "?" for k in ("server", "generator", "others", "steal"))
            lines.append(f"| {w['second']} | {w['sent']} | {w['failed']} | {_ms(w['p50_ms'])} | {_ms(w['max_ms'])} | {cores} |")
    return lines + ["", *_checks(r["criteria"]), ""]


def faults_section(r: dict[str, Any]) -> list[str]:
    h, sl, sd = r["hostile"], r["slow"], r["shutdown"]
    exit_s = "n/a" if sd["exit_seconds"] is None else f"{sd['exit_seconds']:.1f} s"
    lines = [
        "## Faults survived", "",
        f"`python -m bench.reliability.faults` ({_machine(r)}).", "",
        f"- **Bad input**: {h['kinds']} kinds of broken or hostile request (`bench/reliability/hostile.py`) x "
        f"{h['rounds']} rounds = {h['sent']} sent, shuffled with {h['good_sent']} good requests, "
        f"{r['settings']['concurrency']} clients at once: {h['as_documented']} got exactly their documented status "
        f"and JSON code ({h['sent'] - h['as_documented']} did not{': ' + str(h['not_as_documented']) if h['not_as_documented'] else ''}); "
        f"good requests answered 200 {h['good_ok']} of {h['good_sent']}, with the top-1 they get when sent alone "
        f"{h['good_same_as_alone']}; `/readyz` 200 afterwards: {r['ready_after']}; tracebacks in the server log: "
        f"{r['server_tracebacks']}.",
        f"- **Stalled uploads** (RESNET_BODY_TIMEOUT_S={r['settings']['body_timeout_s']}): {sl['clients']} clients that "
        f"announce 100 kB and send 1 kB, then stop or trickle a byte every 0.5 s: answers {sl['answers']}, the last "
        f"after {sl['seconds_max']:.1f} s, connection closed by the server for {sl['closed_after']}; meanwhile "
        f"{sl['good_ok']} of {sl['good_sent']} good requests answered 200.",
        f"- **SIGTERM under load** ({sd['clients']} closed-loop clients, signal to `bentoml serve` only): "
        f"{sd['answered']} answers, of which good 200s {sd['answered_200']}; other answers {sd['other_answers'] or 'none'}; "
        f"answered after the signal (in flight when it came) {sd['completed_after_signal']}; truncated {sd['truncated']}; "
        f"timeouts {sd['timeouts']}; requests not taken (refused, or closed before any answer) {sd['not_taken']}, "
        f"{sd['not_taken_before_signal']} of them sent before the signal; exit status {sd['exit_status']} "
        f"{exit_s} after the signal.",
    ]
    for s in r["startup"]:
        last = next((line for line in reversed(s["lines"]) if line.startswith("error:")), s["lines"][-1] if s["lines"] else "")
        lines.append(f"- **Start-up, model {s['damage']}**: exit status {s['exit_status']} after {s['seconds']:.1f} s, "
                     f"{s['line_count']} line(s) of output, {s['tracebacks']} tracebacks: `{last[:200]}`")
    return lines + ["", *_checks(r["criteria"]), ""]


def fuzz_section(r: dict[str, Any]) -> list[str]:
    lines = ["## Fuzzing", "",
             f"`python -m bench.reliability.fuzz` ({_machine(r)}): schemathesis {r['schemathesis']} against the OpenAPI "
             f"description of a real `bentoml serve`, positive and negative cases, {r['settings']['examples']} examples "
             f"per operation: {r['cases']} requests, server errors (5xx): {r['server_errors']}, 4xx without the "
             f"`{{error, code}}` body: {r['unshaped_4xx']}.", "",
             "| operation | requests | answers |", "| --- | --- | --- |"]
    lines += [f"| {op} | {sum(v.values())} | {', '.join(f'{k}: {n}' for k, n in sorted(v.items()))} |"
              for op, v in r["by_operation"].items()]
    return lines + [""]


def summary(results: dict[str, dict[str, Any]]) -> list[str]:
    """The headline: load held, faults survived, bad inputs tried, requests lost; from whichever
    results exist."""
    lines = ["## Summary", ""]
    if "soak" in results:
        s = results["soak"]["soak"]
        lines.append(f"- **Load held**: {s['rate_per_s']:.1f} requests/s ({results['soak']['settings']['fraction']:.0%} of "
                     f"saturation) for {s['seconds'] / 60:.1f} min: {s['sent']} requests, {s['failed']} failed; resident "
                     f"memory {s['rss_growth']:+.1%} after warm-up"
                     + (f", trend {s['rss_slope_mib_per_hour']:+.1f} MiB per hour." if s.get("rss_slope_mib_per_hour") is not None
                        else "."))
    if "overload" in results:
        o, sat = results["overload"]["overload"], results["overload"]["saturation"]
        lines.append(f"- **Overload**: {o['offered_per_s']:.0f} requests/s offered ({results['overload']['settings']['factor']:g}x "
                     f"the {sat['ok_per_s']:.0f}/s saturation rate): {o['ok']} good answers, {o['shed_503']} shed with 503 "
                     f"({o['shed_with_retry_after']} with Retry-After), {results['overload']['criteria']['other_outcomes']} "
                     f"other; recovered {_sec(results['overload']['recovery']['recovery_s'])} after the load dropped.")
    bad = []
    if "faults" in results:
        f = results["faults"]
        h, sd = f["hostile"], f["shutdown"]
        bad.append(f"{h['sent']} hostile requests of {h['kinds']} kinds ({h['as_documented']} answered as documented)")
        lines.append(f"- **Faults survived**: stalled uploads ({f['slow']['clients']}), SIGTERM under load "
                     f"({sd['truncated']} truncated answers, {sd['completed_after_signal']} in-flight requests finished), "
                     f"corrupt, deleted and absent model at start-up "
                     f"({sum(x['exit_status'] not in (0, None) and x['tracebacks'] == 0 for x in f['startup'])} of "
                     f"{len(f['startup'])} stopped with one line).")
    if "fuzz" in results:
        z = results["fuzz"]
        bad.append(f"{z['cases']} schemathesis requests ({z['server_errors']} server errors)")
    if bad:
        lines.append(f"- **Bad inputs tried**: {'; '.join(bad)}.")
    lost = []
    if "faults" in results:
        h = results["faults"]["hostile"]
        lost.append(f"{h['good_sent'] - h['good_same_as_alone']} of {h['good_sent']} good requests beside the hostile ones")
    if "soak" in results:
        lost.append(f"{results['soak']['soak']['failed']} of {results['soak']['soak']['sent']} in the soak")
    if lost:
        lines.append(f"- **Lost or wrong**: {'; '.join(lost)}.")
    return lines + [""] if len(lines) > 2 else []


SECTIONS = (("faults", faults_section), ("overload", overload_section), ("soak", soak_section), ("fuzz", fuzz_section))


def write_report(out: Path) -> Path:
    lines = ["# Reliability", "",
             "Generated by `python -m bench.reliability.report` from the results files beside it; each section "
             "names the command that measured it. A section is missing when its command has not been run.", ""]
    results = {name: json.loads((out / f"{name}.json").read_text())
               for name, _ in SECTIONS if (out / f"{name}.json").is_file()}
    lines += summary(results)
    for name, render in SECTIONS:
        if name in results:
            lines += render(results[name])
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability.report", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("reports/reliability"))
    log.info("wrote %s", write_report(ensure_writable_dir(p.parse_args(argv).out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
