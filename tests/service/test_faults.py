"""Faults against the real ``bentoml serve`` (bench/reliability/scenarios.py): the hostile corpus beside good
traffic, stalled uploads, overload shedding, SIGTERM under load, fuzzing over HTTP. Nothing here
times anything: the benchmarks (bench.reliability.overload, bench.reliability.soak, bench.reliability.faults)
do, and write the figures to reports/reliability."""
from __future__ import annotations

import asyncio
import json

import pytest

from bench.aio_http import closed_loop
from bench.reliability.scenarios import alone, hostile_beside_good, sigterm_under_load, slow_uploads
from bench.reliability.fuzz import fuzz_url
from bench.reliability.common import classification_ok, good_requests
from tests.service.conftest import start_server
from tests.service.test_bad_inputs import CORPUS

pytestmark = pytest.mark.server
BODY_TIMEOUT_S = 3
FUZZ_EXAMPLES = 60  # per operation: a few hundred requests


@pytest.fixture(scope="module")
def good():
    return good_requests(24)[0]


@pytest.fixture(scope="module")
def server(default_model_tag):
    srv = start_server(env={"RESNET_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_hostile_corpus_beside_good_traffic(server, good):
    expected = asyncio.run(alone(server.port, good))
    assert None not in expected
    offset = server.log_offset()
    result = asyncio.run(hostile_beside_good(server.port, CORPUS, good, expected, rounds=1, concurrency=12))
    assert result["not_as_documented"] == {} and result["as_documented"] == len(CORPUS)
    assert result["good_ok"] == result["good_same_as_alone"] == len(good)
    assert server.get("/readyz")[0] == 200
    assert server.log_since(offset)["server_exceptions"] == {}


def test_stalled_uploads_are_cut_off_and_others_still_served(server, good):
    result = asyncio.run(slow_uploads(server.port, 4, good, timeout=BODY_TIMEOUT_S + 30))
    assert result["answers"] == {"408 body_timeout": 4}, result
    assert result["closed_after"] == 4  # the connection does not linger either
    assert result["good_sent"] > 0 and result["good_ok"] == result["good_sent"]


def test_fuzz_finds_no_server_error(server):
    """The short schemathesis run (``python -m bench.reliability.fuzz`` is the long one): requests generated
    from /docs.json, fitting it and not, to every operation of the real server."""
    result = fuzz_url(server.url, examples=FUZZ_EXAMPLES)
    assert result["server_errors"] == 0, result["server_error_examples"][:3]
    assert result["unshaped_4xx"] == 0, result["unshaped_examples"][:3]
    ops = result["by_operation"]
    assert {"POST /classify", "POST /classify_batch", "GET /models", "GET /metrics"} <= set(ops)
    # Both kinds of case reached the classifier: images it classified and requests it refused.
    classify = ops["POST /classify"]
    assert classify.get("200", 0) > 0 and sum(n for s, n in classify.items() if s.startswith("4")) > 0, classify
    assert server.get("/readyz")[0] == 200


def test_overload_sheds_with_503_and_retry_after(default_model_tag, good):
    """One request in progress per worker: a burst of 24 clients must be partly shed, each shed
    answer a 503 with Retry-After and the JSON body, every other a good 200; then it serves again."""
    srv = start_server(env={"RESNET_MAX_INFLIGHT": "1", "RESNET_RETRY_AFTER_S": "2"})
    try:
        srv.wait_ready()
        pick = lambda i: good[i % len(good)]  # noqa: E731
        outcomes = asyncio.run(closed_loop("127.0.0.1", srv.port, pick, 24, 3.0))
        shed = [o for o in outcomes if o.status == 503]
        assert shed and any(classification_ok(o) for o in outcomes)
        assert all(classification_ok(o) or o.status == 503 for o in outcomes), {o.status for o in outcomes}
        assert all(o.headers.get("retry-after") == "2" and json.loads(o.body)["code"] == "overloaded" for o in shed)
        assert None not in asyncio.run(alone(srv.port, good[:5]))  # one at a time: all classified again
        assert srv.get("/readyz")[0] == 200
    finally:
        srv.stop()


def test_sigterm_under_load_finishes_what_is_in_flight(default_model_tag, good):
    srv = start_server()
    try:
        srv.wait_ready()
        result = sigterm_under_load(srv, good, clients=12, before_s=3.0)
    finally:
        srv.stop()
    assert result["truncated"] == 0 and result["timeouts"] == 0, result
    assert result["all_answers_200"], result["other_answers"]
    assert result["completed_after_signal"] > 0  # requests in flight at the signal were finished
    assert result["not_taken_before_signal"] == 0
    assert result["exit_status"] == 0, result

