"""service/openapi.py and service/bodies.py: /docs.json documents each route's answer and errors, and
the answers on the wire are exactly what it documents."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import BaseModel

from service import bodies
from service.errors import STATUS
from service.openapi import ANSWERS, STATUS_OF, TITLE, error_codes
from service.schema import ROUTES
from tests.service.conftest import encode


@pytest.fixture(scope="module")
def doc(asgi_client):
    return asgi_client.get("/docs.json").json()


def exactly(model: type[BaseModel], body: dict) -> None:
    """``body`` is what ``model`` describes: no key missing, none more, no value coerced."""
    assert model.model_validate(body).model_dump() == body


@pytest.mark.parametrize("model", [bodies.Classification, bodies.BatchClassification, bodies.ModelList,
                                   bodies.ErrorBody])
def test_each_example_is_an_answer_its_model_describes(model):
    exactly(model, model.model_config["json_schema_extra"]["example"])


def test_the_document_names_the_service_and_lists_models_as_get(doc):
    assert doc["info"]["title"] == TITLE and "BentoML" not in doc["info"]["description"]
    assert set(doc["paths"]["/models"]) == {"get"}
    assert "requestBody" not in doc["paths"]["/models"]["get"]


@pytest.mark.parametrize("path", list(ROUTES))
def test_each_route_documents_its_answer_and_every_error_status(doc, path):
    (operation,) = doc["paths"][path].values()
    responses = operation["responses"]
    assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + ANSWERS[path].__name__)
    statuses = {str(STATUS_OF[c]) for c in error_codes(ROUTES[path])}
    assert set(responses) == {"200"} | statuses
    for status in statuses:
        schema = responses[status]["content"]["application/json"]["schema"]
        assert {STATUS_OF[c] for c in schema["properties"]["code"]["enum"]} == {int(status)}
        assert schema["example"]["code"] in schema["properties"]["code"]["enum"]
    if "503" in responses:
        assert "Retry-After" in responses["503"]["headers"]


def test_every_code_is_documented_on_some_route():
    assert set(STATUS) <= {c for route in ROUTES.values() for c in error_codes(route)}


def test_answers_on_the_wire_are_exactly_the_documented_ones(asgi_client, fmnist_test):
    images = [encode(fmnist_test[0][i], "PNG") for i in range(3)]
    r = asgi_client.post("/classify", files={"image": ("a.png", images[0])}, data={"top_k": "3"})
    exactly(bodies.Classification, r.json())
    r = asgi_client.post("/classify_batch", files=[("images", (f"{i}.png", b)) for i, b in enumerate(images)])
    exactly(bodies.BatchClassification, r.json())
    exactly(bodies.ModelList, asgi_client.get("/models").json())


@pytest.mark.parametrize("data,image", [({"top_k": "0"}, True), ({"model": "resnet999"}, True),
                                        ({"model": "123"}, True), ({}, False)])
def test_errors_on_the_wire_are_documented_under_their_status(asgi_client, doc, data, image):
    png = encode(np.zeros((28, 28), np.uint8), "PNG") if image else b"<html></html>"
    r = asgi_client.post("/classify", files={"image": ("a.png", png)}, data=data)
    exactly(bodies.ErrorBody, r.json())
    schema = doc["paths"]["/classify"]["post"]["responses"][str(r.status_code)]["content"]["application/json"]
    assert r.json()["code"] in schema["schema"]["properties"]["code"]["enum"]


def test_schemathesis_reads_every_operation(doc):
    import schemathesis

    operations = [result.ok() for result in schemathesis.openapi.from_dict(doc).get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {"POST /classify", "POST /classify_batch",
                                                                       "GET /models"}
