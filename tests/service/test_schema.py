"""service/schema.py: each API's form declared once, checked against the API's signature at import,
and the declaration is what the request guard validates."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml
import pytest

from service.guard import RequestGuard
from service.schema import CHOICES, ROUTES, Route, UndeclaredRoute, check_apis


def test_the_classifier_matches_its_declarations(service_module):
    check_apis(service_module.Classifier)  # also run at import, where a mismatch stops the service
    assert {m.route for m in service_module.Classifier.apis.values()} == set(ROUTES)


def test_an_api_without_a_declaration_is_caught():
    @bentoml.service(name="probe-undeclared")
    class WithAnExtraRoute:
        @bentoml.api(route="/classify")
        async def classify(self, image: Path, model: str | None = None, top_k: int = 5) -> dict[str, Any]:
            return {}

        @bentoml.api(route="/detect")
        async def detect(self, image: Path) -> dict[str, Any]:
            return {}

    routes = {"/classify": ROUTES["/classify"]}
    with pytest.raises(UndeclaredRoute, match=r"the API detect \(/detect\) has no declaration"):
        check_apis(WithAnExtraRoute, routes)


@pytest.mark.parametrize("route,words", [
    (Route("/classify", "picture", scalars=CHOICES), "takes ['image', 'model', 'top_k']"),
    (Route("/classify", "image", repeatable=True, scalars=CHOICES), "declared repeatable"),
    (Route("/classify", "image", scalars={"model": str, "top_k": str}), "'top_k' is typed <class 'int'>"),
    (Route("/classify", "image", scalars={"model": str}), "declared with ['image', 'model']"),
])
def test_an_api_that_disagrees_with_its_declaration_is_caught(service_module, route, words):
    routes = {**ROUTES, "/classify": route}
    with pytest.raises(UndeclaredRoute) as caught:
        check_apis(service_module.Classifier, routes)
    assert words in str(caught.value)


def test_a_declaration_without_an_api_is_caught(service_module):
    with pytest.raises(UndeclaredRoute, match="/detect is declared but no API serves it"):
        check_apis(service_module.Classifier, {**ROUTES, "/detect": Route("/detect", "image")})


def test_an_integer_field_needs_a_status_for_its_refusal():
    with pytest.raises(ValueError, match="'bad_limit'"):
        Route("/detect", "image", scalars={"limit": int})


def test_the_guard_validates_a_new_route_by_its_declaration():
    from starlette.testclient import TestClient

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"reached the API"})

    detect = Route("/detect", "picture", scalars={"top_k": int})
    client = TestClient(RequestGuard(app, max_body_bytes=1 << 20, routes={detect.path: detect}))
    r = client.post("/detect", files={"image": ("x.png", b"x")})
    assert r.status_code == 400 and r.json() == {
        "error": "unknown field(s) 'image'; expected 'picture', 'top_k'", "code": "unknown_field"}
    r = client.post("/detect", files={"picture": ("x.png", b"x")}, data={"top_k": "many"})
    assert r.status_code == 400 and r.json()["code"] == "bad_top_k"
    r = client.post("/detect", files={"picture": ("x.png", b"x")}, data={"top_k": "3"})
    assert r.status_code == 200 and r.text == "reached the API"
