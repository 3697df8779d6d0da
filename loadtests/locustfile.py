"""Locust load for ``POST /classify``: real images from a corpus folder, every answer checked.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000       # the web UI, http://localhost:8089
    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 30s --host http://127.0.0.1:3000  # closed loop
    ... --served-model resnet56-fmnist --corpus /tmp/corpus-fmnist        # not the default model; own images
    ... --open-rate-per-user 2.5                                          # open loop, 2.5 req/s per user
    ... --max-fail-ratio 0.01 --max-p95-ms 200                            # exit code 1 above either

With no ``--served-model`` it loads the service's default model (``GET /models`` says which, and its
dataset picks the corpus); with no ``--corpus`` it sends a corpus of that kind cached in
``~/.cache/resnet-serving`` (``loadtests/corpus.py``, written on first use). ``python -m loadtests.sweep``
runs this file with ``--latency-file``: every request's time unrounded (``loadtests/latencies.py``).

**Closed loop** (default): each user sends its next request as soon as the previous one returns,
so the offered load falls when the server slows down, and a stall shows up as fewer requests rather
than as latency (coordinated omission).

**Open loop** (``--open-rate-per-user R``): each user sends on a fixed schedule, one request every
1/R s, so U users offer U x R req/s whatever the server does. A user whose
previous request is still out when its slot comes sends as soon as it returns; that lateness is
not hidden: every request is also recorded under ``classify (from schedule)``, timed from its
*scheduled* send time, which is the latency a steady stream of clients would have seen.
"""
from __future__ import annotations

import json
import logging
import random
import time
import urllib.request
from pathlib import Path
from typing import Any

from gevent.lock import Semaphore
from locust import FastHttpUser, events, task
from locust.exception import StopUser
from locust.runners import WorkerRunner

from common.errors import UserError
from loadtests.corpus import BOUNDARY, cached_corpus, check_answer, kind_for, load_corpus, multipart_body
from loadtests.latencies import LatencyRecorder

log = logging.getLogger(__name__)
REQUEST_NAME = "classify"
SCHEDULED_NAME = "classify (from schedule)"
_load: dict[str, Any] = {}  # per process, made by the first user of a test: bodies, model, top_k (or error)
_load_lock = Semaphore()  # users start concurrently (gevent); the first one makes it


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("resnet serving")
    group.add_argument("--served-model", default="", help="served name to send to (the service's default if empty)")
    group.add_argument("--corpus", default="", help="folder written by python -m loadtests.corpus "
                       "(default: one for the model's dataset, cached in ~/.cache/resnet-serving)")
    group.add_argument("--top-k", type=int, default=5, help="top_k to ask for (capped at the model's classes)")
    group.add_argument("--open-rate-per-user", type=float, default=0.0,
                       help="open loop: requests per second each user sends on schedule (0 = closed loop)")
    group.add_argument("--max-fail-ratio", type=float, default=0.01, help="exit code 1 above this failure ratio")
    group.add_argument("--max-p95-ms", type=float, default=0.0, help="exit code 1 above this p95 (0 = no limit)")
    parser.add_argument("--latency-file", default="", include_in_web_ui=False,  # (a group cannot hide it)
                       help="write every request's exact time (ms, JSON by request name) here at the end")


@events.init.add_listener
def _record_exact_latencies(environment, runner, **_kwargs) -> None:
    # Workers hand theirs to the master at each report; elsewhere kept only when asked for (memory).
    if isinstance(runner, WorkerRunner) or getattr(environment.parsed_options, "latency_file", ""):
        LatencyRecorder().install(environment.events)


@events.test_start.add_listener
def _forget_load(**_kwargs) -> None:
    _load.clear()  # a new swarm from the web UI may name another host or model


def _served_model(host: str, name: str) -> dict[str, Any] | None:
    """``GET /models``' entry for ``name`` (or for the default model), or None if the service has no such list."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/models", timeout=10) as resp:
            listed = json.loads(resp.read())["models"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("GET %s/models failed (%s): sending Fashion-MNIST images to the default model", host, e)
        return None
    return next((m for m in listed if (m.get("name") == name if name else m.get("default"))), None)


def _make_load(options, host: str) -> dict[str, Any]:
    """The request bodies of this process, and what a right answer names (the model, top_k predictions)."""
    entry = _served_model(host, options.served_model)
    model = options.served_model or (entry or {}).get("name", "")
    top_k = min(options.top_k, entry["num_classes"]) if entry else options.top_k
    kind = kind_for(entry["dataset"]) if entry else "fmnist"
    corpus = Path(options.corpus) if options.corpus else cached_corpus(kind)
    fields = {"top_k": str(top_k), **({"model": options.served_model} if options.served_model else {})}
    _, images = load_corpus(corpus)
    bodies = [(multipart_body(data, e.content_type, e.file, fields), e.label) for e, data in images]
    return {"bodies": bodies, "model": model, "top_k": top_k}


class ClassifyUser(FastHttpUser):
    """One client posting one image per request to /classify."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        with _load_lock:
            if not _load:
                try:
                    _load.update(_make_load(options, self.host))
                except (UserError, OSError, ValueError, KeyError) as e:  # a missing data set, a bad corpus
                    log.error("cannot prepare the load: %s", e)
                    _load["error"] = str(e)
        if "error" in _load:
            raise StopUser()
        self.bodies, self.model, self.top_k = _load["bodies"], _load["model"], _load["top_k"]
        self.index = random.randrange(len(self.bodies))  # users start at different images
        rate = options.open_rate_per_user
        self.interval = 1.0 / rate if rate > 0 else 0.0
        # Locust runs a task before its first wait: the schedule starts now. Users are spawned over
        # about a second (-r = -u), which spreads their phases.
        self.next_send = time.perf_counter()

    def wait_time(self) -> float:
        if not self.interval:
            return 0.0
        return max(0.0, self.next_send - time.perf_counter())

    @task
    def classify(self) -> None:
        body, _label = self.bodies[self.index % len(self.bodies)]
        self.index += 1
        scheduled = self.next_send
        with self.client.post("/classify", data=body, name=REQUEST_NAME, catch_response=True,
                              headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:120]}")
            elif problem := check_answer(resp.content, self.model, self.top_k):
                resp.failure(problem)
        if self.interval:
            done = time.perf_counter()
            self.environment.events.request.fire(
                request_type="POST", name=SCHEDULED_NAME, response_time=1000 * (done - scheduled),
                response_length=0, exception=None, context={})
            self.next_send = scheduled + self.interval


@events.quitting.add_listener
def _gate(environment, **_kwargs) -> None:
    """For CI: a non-zero exit code when too many requests failed or p95 is over the limit."""
    options, total = environment.parsed_options, environment.stats.total
    if options is None or total.num_requests == 0:
        return
    stats = environment.stats.get(REQUEST_NAME, "POST")
    if stats.num_requests == 0:
        log.error("no %s request was made", REQUEST_NAME)
        environment.process_exit_code = 1
    elif stats.fail_ratio > options.max_fail_ratio:
        log.error("%.2f%% of requests failed (limit %.2f%%)", 100 * stats.fail_ratio, 100 * options.max_fail_ratio)
        environment.process_exit_code = 1
    elif options.max_p95_ms and stats.get_response_time_percentile(0.95) > options.max_p95_ms:
        log.error("p95 %.0f ms is over the limit of %.0f ms", stats.get_response_time_percentile(0.95),
                  options.max_p95_ms)
        environment.process_exit_code = 1
