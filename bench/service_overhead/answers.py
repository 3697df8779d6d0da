"""What an answer costs BentoML to serialise, as the dict the API returns against the typed models of
service/bodies.py, and whether the bytes stay the same (docs/decisions/016-typed-answers-documented.md).

    python -m bench.service_overhead.answers            # --repeats 3000

Each way goes through BentoML's own ``to_http_response`` with the output spec it would build from
the API's return annotation: ``dict[str, Any]`` (today), the model returned as an instance (its
construction counted), and ``Annotated[model, ...]`` fed the dict (a root model: validated, then
serialised like the dict). Best of five runs, microseconds per answer.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, Field

from common.cli import run_cli
from service.bodies import PREDICTIONS, SERVED, BatchClassification, Classification, ModelList

log = logging.getLogger(__name__)
TOP5 = [*PREDICTIONS, *({"label": "Bag", "class_index": 8, "probability": 0.0011 / i} for i in (1, 2, 3))]
ANSWERS: dict[str, tuple[type[BaseModel], dict[str, Any]]] = {
    "classify, top 5": (Classification, {"model": "resnet20-fmnist", "trained": True, "predictions": TOP5}),
    "classify_batch, 16 x top 5": (BatchClassification, {"model": "resnet20-fmnist", "trained": True,
                                                        "results": [{"predictions": TOP5}] * 16}),
    "models, 9 served": (ModelList, {"models": [SERVED] * 9}),
}


def output_spec(annotation: Any) -> Any:
    """The output spec BentoML builds for an API returning ``annotation``, its media type cached as
    service/bentoml_compat.py's ``cache_media_types`` does."""
    from _bentoml_sdk.io_models import IODescriptor

    def api() -> None: ...

    api.__annotations__["return"] = annotation
    spec = IODescriptor.from_output(api)
    spec.media_type = spec.mime_type()
    return spec


def serialise(spec: Any, make: Callable[[], Any], repeats: int) -> tuple[float, bytes]:
    """Seconds per answer (best of five runs) and the bytes BentoML sends."""
    from _bentoml_impl.serde import JSONSerde

    serde = JSONSerde()

    async def run() -> tuple[float, bytes]:
        t0 = time.perf_counter()
        for _ in range(repeats):
            response = await spec.to_http_response(make(), serde)
            body = b"".join(response.body_iterator)
        return (time.perf_counter() - t0) / repeats, body

    loop = asyncio.new_event_loop()
    try:
        return min(loop.run_until_complete(run()) for _ in range(5))
    finally:
        loop.close()


def measure(repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name, (model, answer) in ANSWERS.items():
        today, body = serialise(output_spec(dict[str, Any]), lambda: answer, repeats)
        typed, typed_body = serialise(output_spec(model), lambda: model.model_validate(answer), repeats)
        root, root_body = serialise(output_spec(Annotated[model, Field()]), lambda: answer, repeats)
        rows.append({"answer": name, "dict_us": today * 1e6, "typed_us": typed * 1e6, "root_us": root * 1e6,
                     "typed_same_bytes": typed_body == body, "root_same_bytes": root_body == body})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.service_overhead.answers", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3000, help="answers per run")
    args = p.parse_args(argv)
    log.info("| answer | dict (us) | typed instance (us) | same bytes | Annotated root (us) | same bytes |")
    log.info("| --- | --- | --- | --- | --- | --- |")
    for r in measure(max(1, args.repeats)):
        log.info("| %s | %.1f | %.1f | %s | %.1f | %s |", r["answer"], r["dict_us"], r["typed_us"],
                 r["typed_same_bytes"], r["root_us"], r["root_same_bytes"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
