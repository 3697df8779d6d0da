"""What the real ``bentoml serve`` answers across precisions, several served models, batching under
concurrent load and both topologies (service/topology.py), checked over HTTP against answers computed
offline in this process (the same ONNX file and the same preprocessing of the same bytes, one image at
a time, batch 1, one onnxruntime thread).

Servers (module-scoped, four starts in all; each with its own BENTOML_HOME linked to the tests' store):

* ``multi[per-worker]`` / ``multi[shared-engine]``: fp32, RESNET_MODELS = resnet20-fmnist (default),
  resnet18-imagenet (random weights, RGB 3x224x224, 1000 classes) and resnet32-fmnist (its own
  committed checkpoint: a different trained net of the same input shape);
* ``fp16`` and ``int8``: resnet20-fmnist alone.

Tolerances (measured on this 2-core CPU, onnxruntime's CPU provider):

* ``EXACT_ATOL`` 1e-5 for every probability of a served fp32 answer against the offline one, a batch
  against single requests, and one topology against the other. Measured: 0.0 (bit-identical;
  onnxruntime's CPU kernels gave the same logits for batch 1/7/16 and 1 or 2 intra-op threads). A
  different summation order would move a float32 logit of magnitude ~10 by a few ulps (~4e-6) and a
  probability by at most a quarter of that, so 1e-5 allows it while any other image's or model's
  answer (differences >= 1e-3 here) fails.
* ``FP16_ATOL`` 5e-3 for fp16's probability of the fp32 top class, and every class: measured at most
  8.7e-4 on these 50 images (1.3e-3 on 200); fp16 is half-precision activations, so a per-mille
  difference is expected, a percent would be a wrong conversion.
* int8: top-1 agreement with fp32 only (its probabilities differ by up to 0.04 here); measured 50/50.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.conftest import encode, start_server

pytestmark = [pytest.mark.server, pytest.mark.slow]

DEFAULT = "resnet20-fmnist"
RGB = "resnet18-imagenet"  # the smallest ImageNet-shape net export supports (random weights, ~6 s)
SECOND = "resnet32-fmnist"  # a second real Fashion-MNIST net, from its committed checkpoint (~3 s)
EXACT_ATOL = 1e-5
FP16_ATOL = 5e-3
MIN_AGREEMENT = 48  # of 50
N_PRECISION = 50
TOPOLOGIES = ("per-worker", "shared-engine")


# ---- offline answers -----------------------------------------------------------------------------

class Offline:
    """Each model's probabilities for upload bytes, computed in this process, one image at a time."""

    def __init__(self) -> None:
        self._engines: dict[tuple[str, str], Any] = {}
        self._cache: dict[tuple[str, str, bytes], np.ndarray] = {}

    def card(self, name: str, precision: str = "fp32"):
        import bentoml

        from models.card import ModelCard

        return ModelCard.from_json(Path(bentoml.models.get(name).path_of(f"model.{precision}.json")).read_text())

    def _engine(self, name: str, precision: str):
        import bentoml

        from service.engine import EngineOptions, OnnxEngine
        from service.preprocess import PreprocessSpec

        if (name, precision) not in self._engines:
            path = Path(bentoml.models.get(name).path_of(f"model.{precision}.onnx"))
            self._engines[name, precision] = (OnnxEngine(path, EngineOptions(device="cpu", threads=1)),
                                              PreprocessSpec.from_card(self.card(name, precision)))
        return self._engines[name, precision]

    def probs(self, name: str, data: bytes, precision: str = "fp32") -> np.ndarray:
        from service.preprocess import DecodeLimits, preprocess

        key = (name, precision, data)
        if key not in self._cache:
            engine, spec = self._engine(name, precision)
            logits = engine.infer(preprocess(data, spec, DecodeLimits())[None])[0].astype(np.float64)
            e = np.exp(logits - logits.max())
            self._cache[key] = e / e.sum()
        return self._cache[key]


@pytest.fixture(scope="module")
def extra_models(default_model_tag, tmp_path_factory) -> dict[str, str]:
    """resnet18-imagenet (random weights, fp32) and resnet32-fmnist (fp32) registered in the tests' store."""
    from export.pipeline import ExportConfig, export_model
    from models.default import CHECKPOINTS_DIR

    out = tmp_path_factory.mktemp("export")
    rgb = export_model(ExportConfig(model="resnet18", precisions=["fp32"], out=out / "rgb", register=True))
    second = export_model(ExportConfig(checkpoint=CHECKPOINTS_DIR / SECOND, precisions=["fp32"],
                                       out=out / "second", register=True))
    assert (rgb.name, second.name) == (RGB, SECOND)
    return {DEFAULT: default_model_tag, RGB: rgb.tag, SECOND: second.tag}


@pytest.fixture(scope="module")
def offline(extra_models) -> Offline:
    return Offline()


# ---- servers -------------------------------------------------------------------------------------

def _serve(env: dict[str, str], tmp_path_factory) -> Iterator[Any]:
    """A server with its own BENTOML_HOME whose model store is the tests' (a link to it): ``bentoml
    serve`` empties $BENTOML_HOME/prometheus_multiproc_dir when it starts, so servers sharing a home
    would wipe, then mix, each other's /metrics while several of this module's run at once."""
    home = tmp_path_factory.mktemp("home")
    (home / "models").symlink_to(Path(os.environ["BENTOML_HOME"]) / "models", target_is_directory=True)
    with start_server(env={"BENTOML_HOME": str(home), **env}) as srv:
        yield srv


@pytest.fixture(scope="module")
def multi_per_worker(extra_models, tmp_path_factory):
    yield from _serve({"RESNET_MODELS": f"{DEFAULT},{RGB},{SECOND}", "RESNET_PRECISION": "fp32",
                       "RESNET_TOPOLOGY": "per-worker"}, tmp_path_factory)


@pytest.fixture(scope="module")
def multi_shared_engine(extra_models, tmp_path_factory):
    yield from _serve({"RESNET_MODELS": f"{DEFAULT},{RGB},{SECOND}", "RESNET_PRECISION": "fp32",
                       "RESNET_TOPOLOGY": "shared-engine"}, tmp_path_factory)


@pytest.fixture(scope="module")
def multi(request):
    """Both multi-model servers, by topology."""
    return {"per-worker": request.getfixturevalue("multi_per_worker"),
            "shared-engine": request.getfixturevalue("multi_shared_engine")}


@pytest.fixture(scope="module", params=["fp32", "fp16", "int8"])
def precision_server(request, default_model_tag, tmp_path_factory):
    """(precision, server): fp32 is the multi-model per-worker server; fp16 and int8 start their own."""
    if request.param == "fp32":
        yield "fp32", request.getfixturevalue("multi_per_worker")
        return
    for srv in _serve({"RESNET_MODELS": DEFAULT, "RESNET_PRECISION": request.param}, tmp_path_factory):
        yield request.param, srv


# ---- helpers -------------------------------------------------------------------------------------

def classify(url: str, data: bytes, client: httpx.Client | None = None, **fields: Any) -> httpx.Response:
    post = client.post if client is not None else httpx.post
    return post(url + "/classify", files={"image": ("img", data)},
                data={k: str(v) for k, v in fields.items()}, timeout=120)


def classify_batch(url: str, images: list[bytes], **fields: Any) -> httpx.Response:
    return httpx.post(url + "/classify_batch", files=[("images", (f"img{i}", b)) for i, b in enumerate(images)],
                      data={k: str(v) for k, v in fields.items()}, timeout=120)


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def as_vector(predictions: list[dict[str, Any]], num_classes: int) -> np.ndarray:
    """The answer's probabilities by class index (NaN for the classes not in the top k)."""
    v = np.full(num_classes, np.nan)
    for p in predictions:
        v[p["class_index"]] = p["probability"]
    return v


def assert_matches(predictions: list[dict[str, Any]], expected: np.ndarray, card, atol: float = EXACT_ATOL) -> None:
    """``predictions`` are the top of ``expected`` (by class) in order, labelled from ``card``, within ``atol``."""
    got = as_vector(predictions, len(expected))
    shown = ~np.isnan(got)
    assert np.abs(got[shown] - expected[shown]).max() <= atol, (predictions, expected[shown])
    for p in predictions:
        assert p["label"] == card.class_names[p["class_index"]]
    probs = [p["probability"] for p in predictions]
    assert probs == sorted(probs, reverse=True)
    # the top of expected: every class not shown is below the least probable one shown (within atol)
    assert expected[~shown].max(initial=0.0) <= min(probs) + atol


def metric_total(server, name: str, required: bool = True, **labels: str) -> float:
    """The sum of the samples of ``name`` with ``labels`` in the server's /metrics (``required``: there must be one)."""
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(server.url + "/metrics", timeout=30)
    assert r.status_code == 200
    total, found = 0.0, False
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total, found = total + s.value, True
    assert found or not required, f"no {name}{labels} in /metrics: " + "\n".join(
        line for line in r.text.splitlines() if line.startswith("resnet_"))[:3000]
    return total


@pytest.fixture(scope="module")
def pngs(fmnist_test) -> list[bytes]:
    images, _ = fmnist_test
    return [encode(images[i], "PNG") for i in range(200)]


# ---- 1. every precision ---------------------------------------------------------------------------

def test_every_precision_is_served_and_agrees_with_fp32(precision_server, offline, pngs, fmnist_test):
    precision, srv = precision_server
    models = ok(httpx.get(srv.url + "/models", timeout=30))["models"]
    assert models and all(m["precision"] == precision and m["provider"] == "CPUExecutionProvider" for m in models)
    assert models[0]["name"] == DEFAULT and models[0]["default"] is True

    card = offline.card(DEFAULT)
    uploads = pngs[:N_PRECISION]
    answers = [ok(classify(srv.url, b, top_k=10))["predictions"] for b in uploads]  # 10 = every class
    reference = np.stack([offline.probs(DEFAULT, b) for b in uploads])  # fp32, offline
    served = np.stack([as_vector(a, 10) for a in answers])
    assert not np.isnan(served).any()
    for a in answers:
        assert [p["label"] for p in a] == [card.class_names[p["class_index"]] for p in a]

    agree = int((served.argmax(1) == reference.argmax(1)).sum())
    assert agree >= MIN_AGREEMENT, (precision, agree)
    top = reference.argmax(1)
    top_diff = np.abs(served[np.arange(len(top)), top] - reference[np.arange(len(top)), top]).max()
    if precision == "fp32":
        assert agree == N_PRECISION and np.abs(served - reference).max() <= EXACT_ATOL
    elif precision == "fp16":
        assert top_diff <= FP16_ATOL and np.abs(served - reference).max() <= FP16_ATOL, top_diff
        assert top_diff > 0  # really the fp16 file, not fp32 under another name
    else:  # int8: top-1 only; its answers differ from fp32's (it is not fp32 served under another name)
        assert np.abs(served - reference).max() > 1e-3
    # and the model is the trained one: most answers are right
    labels = fmnist_test[1][:N_PRECISION]
    assert (served.argmax(1) == labels).mean() >= 0.85


# ---- 2. several models at once -------------------------------------------------------------------

def test_models_lists_every_served_model(multi_per_worker, offline):
    models = ok(httpx.get(multi_per_worker.url + "/models", timeout=30))["models"]
    assert [m["name"] for m in models] == [DEFAULT, RGB, SECOND]
    by_name = {m["name"]: m for m in models}
    assert [m["default"] for m in models] == [True, False, False]
    assert by_name[DEFAULT]["input_shape"] == [1, 28, 28] and by_name[SECOND]["input_shape"] == [1, 28, 28]
    assert by_name[RGB]["input_shape"] == [3, 224, 224] and by_name[RGB]["channel_mode"] == "RGB"
    assert by_name[RGB]["num_classes"] == 1000 and by_name[RGB]["trained"] is False
    assert by_name[DEFAULT]["num_classes"] == 10 and by_name[SECOND]["depth"] == 32
    for name, m in by_name.items():
        assert m["class_names"] == list(offline.card(name).class_names)
        assert m["provider"] == "CPUExecutionProvider" and m["precision"] == "fp32"


def test_requests_go_to_the_model_they_name(multi_per_worker, offline, pngs):
    url = multi_per_worker.url
    png = pngs[0]
    default = ok(classify(url, png, top_k=10))
    assert default["model"] == DEFAULT
    assert_matches(default["predictions"], offline.probs(DEFAULT, png), offline.card(DEFAULT))
    named = ok(classify(url, png, model=DEFAULT, top_k=10))
    assert named == default

    second = ok(classify(url, png, model=SECOND, top_k=10))
    assert second["model"] == SECOND and second["trained"] is True
    assert_matches(second["predictions"], offline.probs(SECOND, png), offline.card(SECOND))
    # a different net: its probabilities are not resnet20's
    assert np.abs(as_vector(second["predictions"], 10) - as_vector(default["predictions"], 10)).max() > 1e-3


def rgb_jpeg() -> bytes:
    """A 160x120 colour image (so resized up to 256 and cropped), each channel different."""
    y, x = np.mgrid[0:120, 0:160]
    rgb = np.stack([(x * 255 // 159), (y * 255 // 119), ((x + y) * 3) % 256], -1).astype(np.uint8)
    return encode(rgb, "JPEG")


def test_the_rgb_model_takes_grayscale_png_and_rgb_jpeg(multi_per_worker, offline, pngs):
    url, card = multi_per_worker.url, offline.card(RGB)
    gray, colour = pngs[1], rgb_jpeg()
    answers = {}
    for kind, data in (("gray png", gray), ("rgb jpeg", colour)):
        a = ok(classify(url, data, model=RGB, top_k=100))
        assert a["model"] == RGB and a["trained"] is False and len(a["predictions"]) == 100, kind
        assert_matches(a["predictions"], offline.probs(RGB, data), card)
        assert all(0 <= p["class_index"] < 1000 for p in a["predictions"])
        answers[kind] = a
    # 1000 classes: the top 100 reach past the tenth class, labelled from the ImageNet card
    assert max(p["class_index"] for p in answers["rgb jpeg"]["predictions"]) >= 10
    assert answers["gray png"]["predictions"] != answers["rgb jpeg"]["predictions"]

    batch = ok(classify_batch(url, [gray, colour], model=RGB, top_k=100))
    assert batch["model"] == RGB and len(batch["results"]) == 2
    for result, data in zip(batch["results"], (gray, colour)):
        assert_matches(result["predictions"], offline.probs(RGB, data), card)

    too_many = classify(url, gray, model=RGB, top_k=101)  # RESNET_MAX_TOP_K caps 1000 classes at 100
    assert too_many.status_code == 400 and too_many.json()["code"] == "bad_top_k"
    assert ok(classify(url, gray, model=SECOND, top_k=10))["model"] == SECOND  # 10 classes: top_k 10 allowed
    r = classify(url, gray, model=SECOND, top_k=11)
    assert r.status_code == 400 and r.json()["code"] == "bad_top_k"


@pytest.mark.parametrize("route", ["/classify", "/classify_batch"])
def test_an_unknown_model_is_404_unknown_model(multi_per_worker, pngs, route):
    url = multi_per_worker.url
    if route == "/classify":
        r = classify(url, pngs[0], model="resnet999-nowhere")
    else:
        r = classify_batch(url, pngs[:2], model="resnet999-nowhere")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["code"] == "unknown_model" and "resnet999-nowhere" in body["error"]
    assert all(name in body["error"] for name in (DEFAULT, RGB, SECOND))


# ---- 3. a batch equals single requests while others run beside it ---------------------------------

def test_batch_equals_single_requests_under_concurrent_load(multi_per_worker, offline, pngs):
    url, card = multi_per_worker.url, offline.card(DEFAULT)
    mine = pngs[:16]
    others = pngs[100:164]
    stop = threading.Event()
    started = threading.Barrier(9)  # 8 background clients + this thread
    background: list[list[tuple[int, int, Any]]] = [[] for _ in range(8)]

    errors: list[BaseException] = []

    def client(c: int) -> None:
        try:
            with httpx.Client(timeout=120) as http:
                i, first = c * 8, True
                while first or not stop.is_set():
                    n = i % len(others)
                    r = classify(url, others[n], client=http, top_k=10)
                    background[c].append((n, r.status_code, r.json() if r.status_code == 200 else r.text))
                    i += 1
                    if first:
                        first = False
                        started.wait(120)  # every client has had an answer before the batch goes
        except BaseException as e:  # noqa: BLE001 - reported below, and nobody waits for this client
            errors.append(e)
            started.abort()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(8)]
    for t in threads:
        t.start()
    try:
        started.wait(120)
        batch = ok(classify_batch(url, mine, top_k=10))
        singles = [ok(classify(url, b, top_k=10)) for b in mine]
    finally:
        stop.set()
        for t in threads:
            t.join(180)
    assert not any(t.is_alive() for t in threads) and not errors, errors

    assert batch["model"] == DEFAULT and len(batch["results"]) == 16
    batch_vectors = np.stack([as_vector(r["predictions"], 10) for r in batch["results"]])
    single_vectors = np.stack([as_vector(s["predictions"], 10) for s in singles])
    assert not np.isnan(batch_vectors).any() and not np.isnan(single_vectors).any()
    assert np.abs(batch_vectors - single_vectors).max() <= EXACT_ATOL
    # in order: result i is image i's. Two confident answers can be within 1e-5 in probability, so
    # the images are told apart by log-probability, where the 16 answers differ by far more than
    # float noise: each batch result is nearest its own image's single answer.
    logs_b, logs_s = np.log(batch_vectors), np.log(single_vectors)
    distance = np.abs(logs_b[:, None, :] - logs_s[None, :, :]).max(-1)  # [batch i, single j]
    assert (distance.argmin(1) == np.arange(16)).all(), distance.argmin(1)
    apart = np.abs(logs_s[:, None, :] - logs_s[None, :, :]).max(-1) + np.eye(16) * 1e9
    assert apart.min() > 0.1, apart.min()
    for result, single, data in zip(batch["results"], singles, mine):
        assert [p["class_index"] for p in result["predictions"]] == [p["class_index"] for p in single["predictions"]]
        assert_matches(result["predictions"], offline.probs(DEFAULT, data), card)

    answered = [a for per_client in background for a in per_client]
    assert all(len(per_client) >= 1 for per_client in background)
    failed = [(n, status, body) for n, status, body in answered if status != 200]
    assert not failed, failed[:3]
    for n, _, body in answered:  # each its own answer, as computed alone
        assert body["model"] == DEFAULT
        assert_matches(body["predictions"], offline.probs(DEFAULT, others[n]), card)


# ---- 4. both topologies give the same answers -----------------------------------------------------

def test_both_topologies_give_the_same_answers_models_and_metrics(multi, offline, pngs):
    uploads = pngs[20:40]
    answers: dict[str, dict[str, list[np.ndarray]]] = {}
    for topology, srv in multi.items():
        before = metric_total(srv, "resnet_request_seconds_count", required=False, route="/classify", status="200")
        answers[topology] = {}
        for name in (DEFAULT, SECOND):
            got = [ok(classify(srv.url, b, model=name, top_k=10)) for b in uploads]
            assert all(a["model"] == name for a in got)
            answers[topology][name] = [as_vector(a["predictions"], 10) for a in got]
            for a, b in zip(got, uploads):
                assert_matches(a["predictions"], offline.probs(name, b), offline.card(name))
        # the metrics: the model's batches, and every /classify answered, in both topologies
        assert metric_total(srv, "resnet_batch_size_count", model=DEFAULT) >= 1
        assert metric_total(srv, "resnet_batch_size_count", model=SECOND) >= 1
        after = metric_total(srv, "resnet_request_seconds_count", route="/classify", status="200")
        assert after - before >= 2 * len(uploads), (topology, before, after)

    for name in (DEFAULT, SECOND):
        a, b = (np.stack(answers[t][name]) for t in TOPOLOGIES)
        assert not np.isnan(a).any() and np.abs(a - b).max() <= EXACT_ATOL, name

    described = {t: ok(httpx.get(srv.url + "/models", timeout=30)) for t, srv in multi.items()}
    assert described["per-worker"] == described["shared-engine"]
    assert [m["name"] for m in described["per-worker"]["models"]] == [DEFAULT, RGB, SECOND]
