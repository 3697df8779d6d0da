"""service/bentoml_compat.py: each patch of BentoML's internals takes effect, and none runs on a
BentoML other than the one it was written for."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from types import SimpleNamespace
from typing import Any

import bentoml
import pytest
import uvicorn

from service import bentoml_compat as compat
from service.deadline import ResponseDeadline
from service.drain import Activity


def probe_service(name: str) -> Any:
    """A one-API BentoML service, never served."""
    @bentoml.service(name=name)
    class Probe:
        @bentoml.api
        async def echo(self, text: str) -> dict[str, Any]:
            return {"text": text}

    return Probe


def remote_proxy() -> Any:
    from _bentoml_impl.client import RemoteProxy

    return RemoteProxy("http://127.0.0.1:9")  # never connects: its session is made at the first call


PATCHES = {
    "listen_on_tcp": lambda: compat.listen_on_tcp(),
    "replace_timeout_middleware": lambda: compat.replace_timeout_middleware(ResponseDeadline),
    "cache_media_types": lambda: compat.cache_media_types(probe_service("probe-version-media")),
    "guard_outside_middleware": lambda: compat.guard_outside_middleware(probe_service("probe-version-guard"),
                                                                        lambda app: app),
    "document_openapi": lambda: compat.document_openapi(probe_service("probe-version-docs"), lambda doc: doc),
    "keep_connections_open": lambda: compat.keep_connections_open(remote_proxy()),
    "defer_sigterm": lambda: compat.defer_sigterm(1.0, 1.0, Activity()),
    "note_sigterm": lambda: compat.note_sigterm(threading.Event()),
    "read_header_blocks_up_to": lambda: compat.read_header_blocks_up_to(1 << 20),
}


@pytest.mark.parametrize("patch", list(PATCHES))
def test_on_another_bentoml_every_patch_refuses_before_it_patches(patch, monkeypatch):
    monkeypatch.setattr(bentoml, "__version__", "1.4.41")
    with pytest.raises(compat.IncompatibleBentoML, match=r"written for BentoML 1\.4\.40, but 1\.4\.41"):
        PATCHES[patch]()


def test_listen_on_tcp_makes_bentoml_give_the_engine_a_tcp_socket(monkeypatch):
    from _bentoml_impl.server.serving import _get_server_socket

    def engine_socket_uri() -> str:
        with contextlib.ExitStack() as ports:
            return _get_server_socket(SimpleNamespace(name="probe"), "/tmp", ports, 16)[0]  # nothing bound

    monkeypatch.delenv("BENTOML_NO_UDS", raising=False)
    assert engine_socket_uri().startswith("file://")  # BentoML's default: a unix socket
    compat.listen_on_tcp()
    assert engine_socket_uri().startswith("tcp://127.0.0.1:")


def test_the_app_keeps_its_time_limit_through_response_deadline(asgi_client):
    """BentoML built the service's app with ResponseDeadline where its TimeoutMiddleware was."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware as bentoml_timeout

    layers, app = [], asgi_client.app
    for _ in range(40):  # RequestGuard -> BentoML's app -> its middleware stack, one .app inward at a time
        layers.append(app)
        app = getattr(app, "middleware_stack", None) or getattr(app, "app", None)
        if app is None:
            break
    deadlines = [layer for layer in layers if isinstance(layer, ResponseDeadline)]
    assert len(deadlines) == 1 and deadlines[0].timeout == 60
    assert bentoml_timeout is ResponseDeadline  # the name BentoML looks up when it builds an app


def test_media_types_are_worked_out_once(monkeypatch, service_module):
    svc = probe_service("probe-media")
    compat.cache_media_types(svc)
    spec = svc.apis["echo"].output_spec

    def no_schema(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a JSON schema built for a response's media type")

    monkeypatch.setattr(spec, "model_json_schema", no_schema)
    assert spec.mime_type() == "application/json"
    for service in (service_module.Engine, service_module.Classifier):
        assert all(m.output_spec.media_type for m in service.apis.values())


def test_the_client_keeps_its_session_however_many_requests_and_however_old():
    from _bentoml_impl.client.proxy2 import SessionManager

    proxy = remote_proxy()
    manager: SessionManager = proxy.to_async._session_manager
    manager._request_count = 101
    assert manager._should_refresh()  # BentoML's default: a new session after 100 requests
    assert compat.keep_connections_open(proxy)
    manager._request_count, manager._created_at = 10**9, time.monotonic() - 10**6
    assert not manager._should_refresh()
    assert not compat.keep_connections_open(object())  # served in-process: no client to patch


def test_to_asgi_returns_the_app_wrapped_outside_bentomls(monkeypatch):
    svc = probe_service("probe-guard")
    monkeypatch.setattr(bentoml.Service, "to_asgi", lambda self, *args, **kwargs: "bentoml's app")
    compat.guard_outside_middleware(svc, lambda app: ("guard", app))
    assert svc.to_asgi() == ("guard", "bentoml's app") and isinstance(svc, bentoml.Service)
    with pytest.raises(compat.IncompatibleBentoML, match="not a bentoml.Service"):
        compat.guard_outside_middleware(svc, lambda app: app)  # once only


def test_the_openapi_document_is_edited_each_time_bentoml_builds_it(monkeypatch):
    svc = probe_service("probe-docs")
    monkeypatch.setattr(bentoml.Service, "to_asgi", lambda self, *args, **kwargs: "bentoml's app")
    compat.guard_outside_middleware(svc, lambda app: ("guard", app))
    compat.document_openapi(svc, lambda doc: {**doc, "info": {**doc["info"], "title": "edited"}})
    spec = svc.openapi_spec
    assert type(spec).__name__ == "OpenAPISpecification" and spec.info.title == "edited"
    assert "/echo" in spec.asdict()["paths"] and svc.to_asgi() == ("guard", "bentoml's app")  # both patches hold


# ---- SIGTERM: uvicorn's handler, wrapped ---------------------------------------------------------

@pytest.fixture
def uvicorn_server():
    """A uvicorn Server whose handle_exit is the SIGTERM handler, as in a BentoML worker."""
    previous = signal.getsignal(signal.SIGTERM)
    server = uvicorn.Server(uvicorn.Config(app=lambda scope, receive, send: None))
    signal.signal(signal.SIGTERM, server.handle_exit)
    yield server
    signal.signal(signal.SIGTERM, previous)


def wait_for(condition: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_api_worker_sigterm_sets_the_flag_and_stops_uvicorn(uvicorn_server):
    flag = threading.Event()
    assert compat.note_sigterm(flag)
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert flag.is_set() and uvicorn_server.should_exit


def test_engine_sigterm_waits_until_idle_and_a_second_stops_at_once(uvicorn_server):
    activity = Activity()
    activity.inflight = 1  # an API worker's request in progress
    assert compat.defer_sigterm(quiet_s=0.05, max_s=30, activity=activity)
    handler = signal.getsignal(signal.SIGTERM)
    handler(signal.SIGTERM, None)
    time.sleep(0.2)
    assert not uvicorn_server.should_exit  # still serving
    activity.inflight, activity.last = 0, time.monotonic()
    assert wait_for(lambda: uvicorn_server.should_exit)

    signal.signal(signal.SIGTERM, uvicorn_server.handle_exit)
    uvicorn_server.should_exit = False
    busy = Activity()
    busy.inflight = 1
    assert compat.defer_sigterm(quiet_s=0.05, max_s=30, activity=busy)
    handler = signal.getsignal(signal.SIGTERM)
    handler(signal.SIGTERM, None)
    handler(signal.SIGTERM, None)
    assert uvicorn_server.should_exit


def test_sigterm_patches_refuse_a_handler_that_is_not_uvicorns(uvicorn_server):
    signal.signal(signal.SIGTERM, lambda sig, frame: None)
    with pytest.raises(compat.IncompatibleBentoML, match="handle_exit"):
        compat.note_sigterm(threading.Event())
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not under a server (a direct call): nothing to wrap
    assert not compat.note_sigterm(threading.Event()) and not compat.defer_sigterm(1, 1, Activity())
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_uvicorn_reads_a_header_block_past_h11s_16_kib_in_pieces(service_module):
    """A 64 kB header block arriving in pieces reaches the guard (431 JSON), not h11's plain 400."""
    import h11
    from uvicorn.config import Config
    from uvicorn.protocols.http import h11_impl

    assert h11_impl.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE >= 4 * service_module.CONFIG.max_header_bytes
    from uvicorn.server import ServerState

    protocol = h11_impl.H11Protocol(Config(app=lambda *a: None), server_state=ServerState(), app_state={},
                                    _loop=asyncio.new_event_loop())
    head = b"POST /classify HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 65_536
    protocol.conn.receive_data(head[:40_000])  # incomplete: 40 kB, past h11's own 16 KiB
    assert protocol.conn.next_event() is h11.NEED_DATA
