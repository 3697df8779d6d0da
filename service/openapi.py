"""The service's OpenAPI document (``/docs.json``): BentoML's, completed with what it cannot see.

BentoML builds it from the APIs' signatures: untyped answers, three generic errors, every API a
POST, its own title. ``document`` gives each route its typed answer (service/bodies.py) and every
error it can answer, by status (service/errors.py's STATUS), lists ``/models`` as the GET it is
(the guard replays it as POST), and names the service. service/service.py hands it to
``bentoml_compat.document_openapi``, which applies it each time BentoML builds the document.
"""
from __future__ import annotations

import copy
import typing
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel

from service.bodies import BatchClassification, Classification, ErrorBody, ModelList, OpenAPI30
from service.errors import STATUS
from service.preprocess import RejectCode
from service.schema import CLASSIFY, CLASSIFY_BATCH, MODELS, ROUTES, Route

TITLE = "resnet-serving"
DESCRIPTION = (
    "Image classification by deep residual networks (ResNet) on onnxruntime, batched across clients per "
    "model.\n\nSend one image as `multipart/form-data` to `POST /classify` (field `image`), several to "
    "`POST /classify_batch` (field `images`, repeated); `GET /models` lists the served models. Every error "
    "answers `{\"error\": message, \"code\": short_code}` with the status listed under each route; a 503 "
    "carries `Retry-After` (seconds) and may be sent again after it.")
ANSWERS: dict[str, type[BaseModel]] = {CLASSIFY.path: Classification, CLASSIFY_BATCH.path: BatchClassification,
                                       MODELS.path: ModelList}
REF = "#/components/schemas/{model}"

# Who answers which codes; STATUS gives each its status.
FORM = ("body_too_large", "body_timeout", "overloaded", "not_multipart", "bad_multipart", "unknown_field",
        "missing_field", "not_a_file", "duplicate_field", "bad_field", "bad_filename")  # service/guard.py
IMAGE = typing.get_args(RejectCode)  # service/preprocess.py (and service.py's own too_large)
ENGINE = ("overloaded", "engine_unavailable")  # its queue is full, or it cannot be reached
DEADLINE = ("headers_too_large", "timeout")  # service/guard.py, service/routes.py and service/deadline.py
FAILURE = ("internal",)  # service/routes.py: a bug or a failed onnxruntime call, logged
STATUS_OF = STATUS

# One example per status, worded as the service words it.
EXAMPLES = {
    "bad_top_k": "top_k must be between 1 and 10, got 0",
    "unknown_model": "unknown model 'resnet999'; served: resnet20-fmnist",
    "body_timeout": "the request body was not received in full within 30 s",
    "too_many_pixels": "the PNG is 8000x6000 (48.0 MP); the limit is 40.0 MP, downscale it first",
    "not_an_image": "the upload is HTML, not a raster image",
    "overloaded": "the service is at capacity (4 requests in progress and 4 waiting in this worker); "
                  "retry after 1 s",
    "timeout": "not able to process the request in 60 seconds",
    "headers_too_large": "request headers of 70012 bytes; at most 16384",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before sending the request again",
                               "schema": {"type": "integer"}}}


def error_codes(route: Route) -> list[str]:
    """Every code ``route`` can answer: the guard's checks of its form, then the API's of its fields,
    images and engine call, as its declaration (service/schema.py) says which apply."""
    if route.file_field is None:  # the guard passes it straight to BentoML (GET /models asks the engine)
        return ["engine_unavailable", *DEADLINE]
    codes = [*FORM, *(f"bad_{name}" for name, kind in route.scalars.items() if kind is int)]
    codes += ["unknown_model"] if "model" in route.scalars else []
    codes += ["no_images", "too_many_images"] if route.repeatable else []
    return list(dict.fromkeys([*codes, *IMAGE, *ENGINE, *DEADLINE, *FAILURE]))


def error_responses(route: Route) -> dict[str, Any]:
    """OpenAPI responses for each error status of ``route``, the codes it stands for in its schema."""
    by_status: dict[int, list[str]] = {}
    for code in error_codes(route):
        by_status.setdefault(STATUS_OF[code], []).append(code)
    responses = {}
    for status, codes in sorted(by_status.items()):
        schema = _schema(ErrorBody)
        schema["properties"]["code"]["enum"] = codes
        shown = next((c for c in codes if c in EXAMPLES), codes[0])
        schema["example"] = {"error": EXAMPLES.get(shown, shown.replace("_", " ")), "code": shown}
        responses[str(status)] = {"description": f"{HTTPStatus(status).phrase}: {', '.join(codes)}",
                                  "content": {"application/json": {"schema": schema}},
                                  **({"headers": RETRY_AFTER} if status == 503 else {})}
    return responses


def document(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document (as JSON) with typed answers, error answers, GET /models and the
    service's own title and description."""
    spec = copy.deepcopy(spec)
    spec["info"] = {"title": TITLE, "description": DESCRIPTION, "version": spec["info"]["version"]}
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in ANSWERS.values():
        schema = _schema(model)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    for path, route in ROUTES.items():
        operation = spec["paths"][path]["post"]
        answer = ANSWERS[path]
        operation["responses"] = {
            "200": {"description": (answer.__doc__ or "").strip(),
                    "content": {"application/json": {"schema": {"$ref": REF.format(model=answer.__name__)}}}},
            **error_responses(route)}
        if route.also_get:  # it takes nothing, so the GET the guard answers is the one to show
            operation.pop("requestBody", None)
            spec["paths"][path] = {"get": operation}
    return spec


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template=REF, schema_generator=OpenAPI30)
