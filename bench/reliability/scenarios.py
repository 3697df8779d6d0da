"""Faults thrown at a running ``bentoml serve``, each returning what happened as plain figures:
the hostile-request corpus beside good traffic, clients that stall mid-upload, SIGTERM under load,
and start-up with a corrupt or missing model. ``tests/service/test_faults.py`` runs them small and
asserts; ``python -m bench.reliability.faults`` runs them larger and writes the figures to the report.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.aio_http import NO_RESPONSE, REFUSED, TIMEOUT, TRUNCATED, Connection, Outcome, build_request, send_one
from bench.reliability.hostile import Hostile
from loadtests.http_load import REPO_ROOT, ServeProcess, free_port
from bench.reliability.common import classification_ok

HOST = "127.0.0.1"


def hostile_bytes(h: Hostile) -> bytes:
    return build_request(h.path, h.body, h.content_type, method=h.method, extra=h.extra_headers,
                         declared_length=h.declared_length)


def answered_as_documented(h: Hostile, o: Outcome) -> bool:
    """The documented status, a JSON ``{"error", "code"}`` body, and the documented code."""
    if o.status != h.status:
        return False
    try:
        body = json.loads(o.body)
    except ValueError:
        return False
    return isinstance(body, dict) and set(body) == {"error", "code"} and body["code"] in h.codes


def top1(o: Outcome) -> int | None:
    return json.loads(o.body)["predictions"][0]["class_index"] if classification_ok(o) else None


async def alone(port: int, good: Sequence[bytes]) -> list[int | None]:
    """Each good request's top-1 when sent by itself, one at a time."""
    out = []
    for req in good:
        o, conn = await send_one(HOST, port, req, 60.0)
        out.append(top1(o))
        if conn is not None:
            conn.close()
    return out


async def hostile_beside_good(port: int, corpus: Sequence[Hostile], good: Sequence[bytes],
                              expected: Sequence[int | None], rounds: int = 1, concurrency: int = 12,
                              seed: int = 0) -> dict[str, Any]:
    """Every hostile request ``rounds`` times and every good one ``rounds`` times, shuffled together
    and sent by ``concurrency`` clients at once (so good ones share batches while bad ones are
    refused beside them). Each hostile answer is checked against its documentation, each good
    answer against its top-1 when sent alone."""
    jobs = [("bad", i) for i in range(len(corpus))] * rounds + [("good", i) for i in range(len(good))] * rounds
    random.Random(seed).shuffle(jobs)
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    results: list[tuple[str, int, Outcome]] = []

    async def client() -> None:
        conn: Connection | None = None
        while not queue.empty():
            kind, i = queue.get_nowait()
            raw = hostile_bytes(corpus[i]) if kind == "bad" else good[i]
            o, conn = await send_one(HOST, port, raw, 60.0, conn)
            results.append((kind, i, o))
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    wrong: Counter = Counter()
    bad_ok = good_ok = same = 0
    for kind, i, o in results:
        if kind == "bad":
            if answered_as_documented(corpus[i], o):
                bad_ok += 1
            else:
                wrong[f"{corpus[i].name}: got {o.status} {o.body[:80]!r}"] += 1
        else:
            good_ok += classification_ok(o)
            same += top1(o) is not None and top1(o) == expected[i]
    return {"kinds": len(corpus), "rounds": rounds, "sent": len(corpus) * rounds, "as_documented": bad_ok,
            "not_as_documented": dict(wrong), "good_sent": len(good) * rounds, "good_ok": good_ok,
            "good_same_as_alone": same}


async def _stall(port: int, trickle: bool, timeout: float) -> tuple[int | str, str | None, float, bool]:
    """Announces a 100 kB body, sends 1 kB of it, then stalls (or trickles a byte every 0.5 s).
    Returns (status, code, seconds from connecting to the answer, whether the server closed)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    t0 = time.perf_counter()
    writer.write(build_request("/classify", b"-" * 1000, "multipart/form-data; boundary=x", declared_length=100_000))
    await writer.drain()

    async def trickler() -> None:
        while True:
            await asyncio.sleep(0.5)
            writer.write(b"-")
            await writer.drain()

    task = asyncio.create_task(trickler()) if trickle else None
    conn = Connection(reader, writer)
    try:
        async with asyncio.timeout(timeout):
            status, _, body = await conn.exchange(b"")
            closed = (await reader.read()) == b""
    except TimeoutError:
        return TIMEOUT, None, time.perf_counter() - t0, False
    except ConnectionError:
        return NO_RESPONSE, None, time.perf_counter() - t0, True
    finally:
        if task is not None:
            task.cancel()
        writer.close()
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        code = None
    return status, code, time.perf_counter() - t0, closed


async def slow_uploads(port: int, clients: int, good: Sequence[bytes], timeout: float) -> dict[str, Any]:
    """``clients`` stalled uploads (half stall, half trickle) while 4 clients send good requests
    until the last stalled one has its answer."""
    done = asyncio.Event()
    good_outcomes: list[Outcome] = []

    async def good_client(c: int) -> None:
        conn, i = None, c
        while not done.is_set():
            o, conn = await send_one(HOST, port, good[i % len(good)], 60.0, conn)
            good_outcomes.append(o)
            i += 4
        if conn is not None:
            conn.close()

    async def stalled() -> list[tuple[int | str, str | None, float, bool]]:
        try:
            return await asyncio.gather(*(_stall(port, c % 2 == 1, timeout) for c in range(clients)))
        finally:
            done.set()

    answers, *_ = await asyncio.gather(stalled(), *(good_client(c) for c in range(4)))
    return {"clients": clients, "answers": dict(Counter(f"{s} {c}" for s, c, _, _ in answers)),
            "seconds_max": max(t for _, _, t, _ in answers), "closed_after": sum(c for *_, c in answers),
            "good_sent": len(good_outcomes), "good_ok": sum(classification_ok(o) for o in good_outcomes)}


def sigterm_under_load(server: ServeProcess, good: Sequence[bytes], clients: int = 12, before_s: float = 3.0,
                       exit_timeout: float = 90.0) -> dict[str, Any]:
    """``clients`` closed-loop clients; after ``before_s`` SIGTERM goes to the ``bentoml serve``
    process alone (as an orchestrator sends it). Each client stops at its first refused connection
    after the signal. Every answer must be complete; answers after the signal show that requests
    in flight were finished."""
    outcomes: list[Outcome] = []
    t_signal: list[float] = []

    async def run() -> None:
        t0 = time.perf_counter()

        async def client(c: int) -> None:
            conn, i = None, c * 7919
            while time.perf_counter() - t0 < before_s + exit_timeout:
                o, conn = await send_one(HOST, server.port, good[i % len(good)], 60.0, conn, t0)
                outcomes.append(o)
                i += 1
                if t_signal and o.status == REFUSED:
                    break
                if o.status == REFUSED:
                    await asyncio.sleep(0.05)
            if conn is not None:
                conn.close()

        async def killer() -> None:
            await asyncio.sleep(before_s)
            t_signal.extend((time.perf_counter() - t0, time.perf_counter()))
            os.kill(server.proc.pid, signal.SIGTERM)

        async def watcher() -> None:
            await asyncio.sleep(before_s)
            while server.proc.poll() is None and time.perf_counter() - t0 < before_s + exit_timeout:
                await asyncio.sleep(0.05)
            exited_at.append(time.perf_counter())

        await asyncio.gather(killer(), watcher(), *(client(c) for c in range(clients)))

    exited_at: list[float] = []
    asyncio.run(run())
    t_sig, signalled_at = t_signal
    status = server.proc.poll()
    exit_seconds = exited_at[0] - signalled_at if status is not None else None
    answers = [o for o in outcomes if isinstance(o.status, int)]
    return {"clients": clients, "requests": len(outcomes), "answered": len(answers),
            "answered_200": sum(classification_ok(o) for o in answers),
            "all_answers_200": all(classification_ok(o) for o in answers),
            "other_answers": dict(Counter(str(o.status) for o in answers if not classification_ok(o))),
            "completed_after_signal": sum(o.sent < t_sig < o.sent + o.latency and classification_ok(o) for o in outcomes),
            "truncated": sum(o.status == TRUNCATED for o in outcomes),
            "timeouts": sum(o.status == TIMEOUT for o in outcomes),
            "not_taken": sum(o.status in (REFUSED, NO_RESPONSE) for o in outcomes),
            "not_taken_before_signal": sum(o.status in (REFUSED, NO_RESPONSE) and o.sent < t_sig for o in outcomes),
            "exit_status": status, "exit_seconds": exit_seconds}


def start_with_broken_model(home: Path, model: str, precision: str, damage: str,
                            timeout: float = 120.0) -> dict[str, Any]:
    """Copies ``model`` from the current BentoML store into a fresh store at ``home``, damages it
    (``corrupt``: four bytes of its ONNX file overwritten; ``missing``: the file deleted; ``absent``:
    the model left out of the store) and runs ``bentoml serve`` there. Returns its exit status, its
    time to exit and its output."""
    import bentoml

    stored = bentoml.models.get(model)
    target = home / "models" / model
    if damage != "absent":
        shutil.copytree(Path(stored.path).parent, target)
        onnx = target / stored.tag.version / f"model.{precision}.onnx"
        if damage == "corrupt":
            with open(onnx, "r+b") as f:
                f.seek(onnx.stat().st_size // 2)
                f.write(b"\xde\xad\xbe\xef")
        elif damage == "missing":
            onnx.unlink()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENTOML_HOME": str(home), "RESNET_MODELS": model}
    cli = Path(sys.executable).parent / "bentoml"
    t0 = time.perf_counter()
    try:
        done = subprocess.run([str(cli), "serve", "service.service:Classifier", "--port", str(free_port())], cwd=REPO_ROOT,
                              env=env, capture_output=True, text=True, timeout=timeout)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        status, output = None, (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    lines = [line for line in output.splitlines() if line.strip()]
    return {"damage": damage, "exit_status": status, "seconds": time.perf_counter() - t0, "lines": lines[-20:],
            "line_count": len(lines), "tracebacks": output.count("Traceback")}
