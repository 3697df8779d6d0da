"""Every patch of BentoML's internals (and of the uvicorn server its workers run), in one module
(docs/decisions/010-bentoml-workarounds.md). Each has a test in tests/service/test_bentoml_compat.py.

Each was written for BentoML 1.4.40 and checks that version first: on another it raises rather
than warns, because each reaches into private names whose meaning can change without the patch
failing, and pyproject pins the version, so it changes only on purpose, when each patch is to be
re-checked. Each then checks that it took effect.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import bentoml

from service import drain

log = logging.getLogger("bentoml.resnet_serving")

BENTOML_VERSION = "1.4.40"


class IncompatibleBentoML(RuntimeError):
    """A patch met another BentoML (or server) than the one it was written for, or did not take."""


def _written_for_bentoml(patch: str) -> None:
    if bentoml.__version__ != BENTOML_VERSION:
        raise IncompatibleBentoML(
            f"{patch}: written for BentoML {BENTOML_VERSION}, but {bentoml.__version__} is installed; check the "
            f"patch against it (service/bentoml_compat.py), then update BENTOML_VERSION")


def _require(took_effect: bool, patch: str, what: str) -> None:
    if not took_effect:
        raise IncompatibleBentoML(f"{patch}: did not take effect ({what}); BentoML {bentoml.__version__}")


# ---- before BentoML builds anything: at the service's import ------------------------------------

def listen_on_tcp() -> None:
    """The engine listens on loopback TCP, not a unix socket: BentoML's arbiter deletes the socket's
    directory as SIGTERM arrives, failing requests still on their way to the draining engine
    (docs/decisions/007-sigterm-drain.md; no upstream issue found). Before ``bentoml serve`` makes sockets."""
    patch = "BENTOML_NO_UDS"
    _written_for_bentoml(patch)
    os.environ.setdefault("BENTOML_NO_UDS", "1")
    _require("BENTOML_NO_UDS" in os.environ, patch, "the variable is not set")  # BentoML reads only whether it is


def replace_timeout_middleware(middleware: type) -> None:
    """BentoML's ``TimeoutMiddleware`` (the services' ``traffic`` timeout) keeps every finished request
    alive for the whole limit (docs/decisions/006-response-deadline.md; no upstream issue found):
    ``middleware`` takes its place in each app BentoML builds in this process from now on."""
    patch = "TimeoutMiddleware"
    _written_for_bentoml(patch)
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = middleware  # type: ignore[misc,assignment]: looked up by name at each app's build
    _require(traffic.TimeoutMiddleware is middleware, patch, "bentoml._internal.server.http.traffic")


def read_header_blocks_up_to(size: int) -> None:
    """uvicorn's HTTP parser (h11) answers a plain-text 400 to a request head it has not received in
    full within 16 KiB, so whether an oversized header block got the guard's JSON 431 depended on how
    TCP split it. Raised to ``size`` (over the guard's own limit), the head always reaches the guard,
    which refuses it as documented. uvicorn reads the default per connection, from its module."""
    patch = "h11 incomplete-event limit"
    _written_for_bentoml(patch)
    from uvicorn.protocols.http import h11_impl

    h11_impl.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE = size  # type: ignore[attr-defined]: a module constant
    _require(h11_impl.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE == size, patch, "uvicorn.protocols.http.h11_impl")


def cache_media_types(service: Any) -> None:
    """BentoML works out each response's media type from its output's JSON schema, which pydantic
    builds anew for every response (~6% of a worker's CPU per request); the value never changes, so
    it is worked out once per API (docs/decisions/010-bentoml-workarounds.md; no upstream issue found)."""
    patch = "media types"
    _written_for_bentoml(patch)
    for method in service.apis.values():
        if method.output_spec.media_type is None:
            method.output_spec.media_type = method.output_spec.mime_type()
    missing = [name for name, method in service.apis.items() if method.output_spec.media_type is None]
    _require(not missing, patch, f"no media type on {missing}")


def guard_outside_middleware(service: Any, wrap: Callable[[Any], Any]) -> None:
    """Makes ``service.to_asgi()`` return ``wrap(app)``: outside BentoML's own middleware (tracing,
    metrics, access log, timeout), where ``add_asgi_middleware`` would put it inside, so a refusal
    skips that stack (docs/decisions/004-guard-outside-bentoml-middleware.md). BentoML has no
    setting for it, so the service object gets a subclass of its class with that one method."""
    patch = "the guard outside BentoML's middleware"
    _written_for_bentoml(patch)
    _require(type(service) is bentoml.Service, patch, f"{service!r} is not a bentoml.Service")

    class Guarded(bentoml.Service):  # type: ignore[misc]
        __slots__ = ()  # BentoML's Service is an attrs class with slots: same layout, one method more

        def to_asgi(self, *args: Any, **kwargs: Any) -> Any:
            return wrap(super().to_asgi(*args, **kwargs))

    service.__class__ = Guarded
    _require(type(service).to_asgi is Guarded.to_asgi, patch, "the class swap")


def document_openapi(service: Any, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """BentoML builds the OpenAPI document (``/docs.json``, a Bento's ``apis/openapi.yaml``) from the
    APIs' signatures alone and has no setting to add to it (no upstream issue found): each time it is
    built, ``edit`` rewrites it as JSON (service/openapi.py). Like ``guard_outside_middleware``, the
    service object gets a subclass of its class, with that one property."""
    patch = "the OpenAPI document"
    _written_for_bentoml(patch)
    from bentoml._internal.service.openapi.specification import OpenAPISpecification
    from bentoml._internal.utils.cattr import bentoml_cattr

    _require(isinstance(service, bentoml.Service), patch, f"{service!r} is not a bentoml.Service")

    class Documented(type(service)):  # type: ignore[misc]
        __slots__ = ()  # same layout as its base (an attrs class with slots)

        @property
        def openapi_spec(self) -> OpenAPISpecification:
            spec = super().openapi_spec.asdict()
            return bentoml_cattr.structure(edit(spec), OpenAPISpecification)  # what BentoML's callers expect

    service.__class__ = Documented
    _require(type(service).openapi_spec is Documented.openapi_spec, patch, "the class swap")


# ---- in each worker, as its service instance starts -----------------------------------------------

def keep_connections_open(dependency: Any) -> bool:
    """BentoML's client to a dependency closes and replaces its aiohttp session every 100 requests
    (or 300 s) even while other requests still use it, which fails them under concurrency
    (bentoml/BentoML#5540, #5544): both limits are lifted on this worker's client. False, changing
    nothing, when ``dependency`` is served in-process (a direct call, the tests): no client then."""
    patch = "client session limits"
    _written_for_bentoml(patch)
    from _bentoml_impl.client import RemoteProxy
    from _bentoml_impl.client.proxy2 import SessionManager

    if not isinstance(dependency, RemoteProxy):
        return False
    manager = dependency.to_async._session_manager  # the sync client calls through the async one
    _require(isinstance(manager, SessionManager), patch, f"the async client's session manager is {manager!r}")
    manager.max_requests, manager.max_age = 2**62, float("inf")
    _require(not manager._should_refresh(), patch, "the session manager still wants a new session")
    return True


def defer_sigterm(quiet_s: float, max_s: float, activity: drain.Activity = drain.ACTIVITY) -> bool:
    """Engine: uvicorn's SIGTERM handler runs once this process has been idle for ``quiet_s`` (at most
    ``max_s``), so the API workers' last requests are still served; a second SIGTERM stops it at once
    (docs/decisions/007-sigterm-drain.md). False, changing nothing, outside a server."""
    patch = "engine SIGTERM drain"
    previous = _uvicorn_sigterm_handler(patch)
    if previous is None:
        return False
    draining = threading.Event()

    def stop_when_idle(sig: int) -> None:
        drain.wait_until_idle(activity, quiet_s, max_s)
        previous(sig, None)  # uvicorn's handle_exit only sets flags: safe from this thread

    def on_sigterm(sig: int, frame: Any) -> None:
        if draining.is_set():
            previous(sig, frame)
            return
        draining.set()
        log.info("SIGTERM: serving until idle for %.1f s (at most %.0f s)", quiet_s, max_s)
        threading.Thread(target=stop_when_idle, args=(sig,), name="drain", daemon=True).start()

    _install_sigterm(on_sigterm, patch)
    return True


def note_sigterm(shutting_down: threading.Event = drain.SHUTTING_DOWN) -> bool:
    """API workers: SIGTERM also sets ``shutting_down``, after which each response closes its
    connection (``drain.close_when_shutting_down``; docs/decisions/007-sigterm-drain.md; no upstream
    issue found). False, changing nothing, outside a server."""
    patch = "API worker SIGTERM"
    previous = _uvicorn_sigterm_handler(patch)
    if previous is None:
        return False

    def on_sigterm(sig: int, frame: Any) -> None:
        shutting_down.set()
        previous(sig, frame)

    _install_sigterm(on_sigterm, patch)
    return True


def _uvicorn_sigterm_handler(patch: str) -> Callable[[int, Any], None] | None:
    """The SIGTERM handler uvicorn's ``Server`` installed (BentoML's workers create the service
    instance inside it), for a wrapper to call; None in a process that is not a BentoML worker and
    has no such handler (a direct call, the tests, off the main thread)."""
    _written_for_bentoml(patch)
    import uvicorn
    from bentoml._internal.context import server_context

    on_main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    if getattr(handler, "__func__", None) is uvicorn.Server.handle_exit:
        return handler  # type: ignore[return-value]
    in_worker = server_context.service_type is not None  # set by BentoML's worker before it serves
    _require(not in_worker and not callable(handler), patch,
             f"expected uvicorn's Server.handle_exit as the SIGTERM handler, found {handler!r}"
             f"{'' if on_main_thread else ' (off the main thread)'}")
    return None


def _install_sigterm(handler: Callable[[int, Any], None], patch: str) -> None:
    signal.signal(signal.SIGTERM, handler)
    _require(signal.getsignal(signal.SIGTERM) is handler, patch, "the SIGTERM handler")
