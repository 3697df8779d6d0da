"""Locust load for ``POST /classify``: real images from a corpus folder, every answer checked.

    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 30s --host http://127.0.0.1:3000 \\
        --served-model resnet20-fmnist --corpus /tmp/corpus-fmnist          # closed loop
    ... --open-rate-per-user 2.5                                          # open loop, 2.5 req/s per user
    ... --max-fail-ratio 0.01 --max-p95-ms 200                            # exit code 1 above either

``python -m loadtests.sweep`` writes the corpus (``loadtests/corpus.py``) and runs this file.

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

import logging
import random
import time
from pathlib import Path

from locust import FastHttpUser, events, task

from loadtests.corpus import BOUNDARY, check_answer, load_corpus, multipart_body

log = logging.getLogger(__name__)
REQUEST_NAME = "classify"
SCHEDULED_NAME = "classify (from schedule)"
_bodies: list[tuple[bytes, int | None]] = []  # per process: (multipart body, label), loaded once


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("resnet serving")
    group.add_argument("--served-model", default="", help="served name to send to (the service's default if empty)")
    group.add_argument("--corpus", default="", help="folder written by python -m loadtests.corpus")
    group.add_argument("--top-k", type=int, default=5, help="top_k to ask for (capped at the model's classes)")
    group.add_argument("--open-rate-per-user", type=float, default=0.0,
                       help="open loop: requests per second each user sends on schedule (0 = closed loop)")
    group.add_argument("--max-fail-ratio", type=float, default=0.01, help="exit code 1 above this failure ratio")
    group.add_argument("--max-p95-ms", type=float, default=0.0, help="exit code 1 above this p95 (0 = no limit)")


def _load_bodies(options) -> list[tuple[bytes, int | None]]:
    if not _bodies:
        if not options.corpus:
            raise RuntimeError("--corpus is required (python -m loadtests.corpus writes one)")
        fields = {"top_k": str(options.top_k)}
        if options.served_model:
            fields["model"] = options.served_model
        _, images = load_corpus(Path(options.corpus))
        _bodies.extend((multipart_body(data, e.content_type, e.file, fields), e.label) for e, data in images)
    return _bodies


class ClassifyUser(FastHttpUser):
    """One client posting one image per request to /classify."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.bodies = _load_bodies(options)
        self.model, self.top_k = options.served_model, options.top_k
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
