"""The form each POST API of the Classifier takes, declared once.

service/guard.py validates every request against its route's declaration before BentoML parses it,
and service/service.py calls ``check_apis`` at import, so an API without a declaration, or whose
signature disagrees with its declaration, stops the service from starting.
"""
from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.errors import STATUS


@dataclass(frozen=True)
class Route:
    """One POST API of the Classifier: a multipart form of one file field and text fields."""

    path: str
    file_field: str | None = None  # None: the route takes no fields, so there is nothing to validate
    repeatable: bool = False  # the file field may come several times, one image each
    scalars: Mapping[str, type] = field(default_factory=dict)  # text fields (each at most once) and their type
    also_get: bool = False  # answered to GET too (BentoML's APIs are POST only)

    def __post_init__(self) -> None:
        if self.file_field is None and (self.scalars or self.repeatable):
            raise ValueError(f"{self.path}: a route without a file field takes no fields")
        unsupported = {name: kind for name, kind in self.scalars.items() if kind not in (str, int)}
        if unsupported:
            raise ValueError(f"{self.path}: text fields are str or int, not {unsupported}")
        for name in (n for n, kind in self.scalars.items() if kind is int and f"bad_{n}" not in STATUS):
            raise ValueError(f"{self.path}: the guard refuses a bad {name!r} as 'bad_{name}', "
                             f"which needs a status in service/errors.py")

    @property
    def fields(self) -> tuple[str, ...]:
        return ((self.file_field,) if self.file_field else ()) + tuple(self.scalars)


CHOICES = {"model": str, "top_k": int}  # which served model, how many predictions
CLASSIFY = Route("/classify", "image", scalars=CHOICES)
CLASSIFY_BATCH = Route("/classify_batch", "images", repeatable=True, scalars=CHOICES)
MODELS = Route("/models", also_get=True)
ROUTES = {r.path: r for r in (CLASSIFY, CLASSIFY_BATCH, MODELS)}


class UndeclaredRoute(RuntimeError):
    """An API of the service and the declarations disagree."""


def check_apis(service: Any, routes: Mapping[str, Route] = ROUTES) -> None:
    """Raises UndeclaredRoute unless every API of the BentoML ``service`` has a declaration in
    ``routes`` that its signature matches, and every declaration an API."""
    apis = {method.route: method for method in service.apis.values()}
    problems = [f"{path} is declared but no API serves it" for path in sorted(routes.keys() - apis.keys())]
    for path, method in apis.items():
        route = routes.get(path)
        if route is None:
            problems.append(f"the API {method.name} ({path}) has no declaration in service/schema.py, so no "
                            f"request to it would be validated or admitted")
        else:
            problems += _disagreements(route, method.input_spec)
    if problems:
        raise UndeclaredRoute(f"{service.name}: " + "; ".join(problems))


def _disagreements(route: Route, spec: Any) -> list[str]:
    """How the input model BentoML built from an API's signature differs from ``route``."""
    fields = spec.model_fields
    if set(fields) != set(route.fields):
        return [f"{route.path} takes {sorted(fields)} but is declared with {sorted(route.fields)}"]
    problems = []
    files = list(spec.multipart_fields)
    if files != ([route.file_field] if route.file_field else []):
        problems.append(f"{route.path}: its file fields are {files}, declared {route.file_field!r}")
    elif route.file_field:
        annotation = fields[route.file_field].annotation
        if (typing.get_origin(annotation) is list) != route.repeatable:
            problems.append(f"{route.path}: field {route.file_field!r} is {'' if route.repeatable else 'not '}"
                            f"declared repeatable but typed {annotation}")
    for name, kind in route.scalars.items():
        annotation = fields[name].annotation
        if _without_none(annotation) != kind:
            problems.append(f"{route.path}: field {name!r} is typed {annotation}, declared {kind.__name__}")
    return problems


def _without_none(annotation: Any) -> Any:
    """``T`` for ``T``, ``T | None`` and ``Optional[T]``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation
