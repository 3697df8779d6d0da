"""Every setting of the service, in one place, read from the environment.

| variable | default | meaning |
| --- | --- | --- |
| RESNET_MODELS | resnet20-fmnist,resnet32-fmnist,...,plain56-fmnist (models.default.DEFAULT_SERVED_MODELS) | comma-separated served names from the BentoML store (first = default); `name:version` serves that store version, a bare name the latest |
| RESNET_PRECISION | auto | fp32, fp16 or int8; auto = fp16 on CUDA, fp32 on the CPU |
| RESNET_DEVICE | auto | auto (CUDA if onnxruntime can use it), cuda or cpu |
| RESNET_DEVICE_ID | 0 | CUDA device |
| RESNET_MAX_BATCH_SIZE | 32 | adaptive batching: largest batch formed |
| RESNET_MAX_LATENCY_MS | 1000 | adaptive batching: a request predicted to wait longer for its model is shed (503; by the worker's batcher, or by BentoML's in the shared engine) |
| RESNET_MODEL_SETTINGS | {} | per-model overrides of the two above, JSON: `{"resnet110-fmnist": {"max_batch_size": 8, "max_latency_ms": 200}}` |
| RESNET_BATCHING | on | off = one onnxruntime call per request (for measuring batching on against off) |
| RESNET_API_WORKERS | cores | HTTP worker processes: each reads, checks and decodes its uploads and, per-worker, runs the models (cores: the CPUs this process may use, taskset or a container's cpuset honoured) |
| RESNET_TOPOLOGY | auto | where the models run: per-worker (every API worker loads them and batches its own requests), shared-engine (one Engine process batches for all workers) or auto (per-worker on the CPU, shared-engine on CUDA); service/topology.py |
| RESNET_ENGINE_THREADS | auto | onnxruntime intra-op threads per session (CPU provider); auto = cores in the shared engine and for inputs of 96x96 pixels or more; else cores / API workers (at least 1) in each worker |
| RESNET_ENGINE_SPIN | off | on = onnxruntime's intra-op threads busy-wait between runs (its default), taking CPU from the API workers |
| RESNET_MAX_IMAGE_BYTES | 10485760 | largest accepted upload, per image |
| RESNET_MAX_PIXELS | 40000000 | largest accepted width x height |
| RESNET_MAX_BODY_BYTES | 33554432 | largest request body (413 above it) |
| RESNET_MAX_HEADER_BYTES | 16384 | largest request header block, all fields together (431 above it) |
| RESNET_MAX_HEADERS | 100 | most request header fields (431 above it) |
| RESNET_MAX_BATCH_IMAGES | 16 | most images in one /classify_batch request |
| RESNET_MAX_TOP_K | 100 | largest top_k (and never more than the model's classes) |
| RESNET_CUDA_GRAPHS | off | on = one captured CUDA graph per batch bucket (CUDA provider only; off until measured) |
| RESNET_PREFER_NHWC | off | on = the CUDA provider's NHWC convolution kernels (`prefer_nhwc`; CUDA only) |
| RESNET_MAX_INFLIGHT | 24 | classify requests in progress at once in each API worker; the next wait (RESNET_ADMIT_WAIT_MS) or get 503 + Retry-After |
| RESNET_ADMIT_WAIT_MS | 250 | a request that finds its API worker at the cap waits this long for a slot (behind at most RESNET_MAX_INFLIGHT others) before its 503 (0 = 503 at once) |
| RESNET_ADMIT_TARGET_MS | 0 | > 0: while the requests an API worker admitted spend longer than this in it on average, it admits fewer than RESNET_MAX_INFLIGHT (0 = off; docs/decisions/003-admission-control.md) |
| RESNET_RETRY_AFTER_S | 1 | the Retry-After of every 503 |
| RESNET_BODY_TIMEOUT_S | 30 | a request body not received in full within this time gets 408 and the connection is closed |
| RESNET_DRAIN_QUIET_S | 1 | shared-engine: after SIGTERM the engine keeps serving until no request has come for this long ... |
| RESNET_DRAIN_MAX_S | 30 | ... or for at most this long, then shuts down gracefully |
| RESNET_MALLOC_TRIM_S | 30 | every this many seconds each process hands the C allocator's free heap pages back to the system (glibc `malloc_trim`), so resident memory stays flat (0 = never; docs/decisions/018-malloc-trim.md) |
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from models.default import DEFAULT_SERVED_MODELS


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:  # also refuses nan
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise ValueError(f"{name}={value!r}: choose from {', '.join(choices)}")
    return value


# Per-worker sessions of models with inputs this large use every core (threads_per_session).
SPLIT_PIXELS = 96 * 96
_TAG_PART = re.compile(r"[a-z0-9]([-._a-z0-9]{0,61}[a-z0-9])?")  # BentoML's rule for a tag's name and version


@dataclass(frozen=True)
class BatchSettings:
    """One model's adaptive batching: the largest batch, and the wait past which BentoML sheds (503)."""

    max_batch_size: int
    max_latency_ms: int


def _models(env: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """RESNET_MODELS -> (served names in order, (name, version) of each one pinned as ``name:version``)."""
    names, versions = [], []
    for entry in (env.get("RESNET_MODELS") or ",".join(DEFAULT_SERVED_MODELS)).split(","):
        name, sep, version = (part.strip() for part in entry.partition(":"))
        if not name and not sep:
            continue
        if not _TAG_PART.fullmatch(name) or (sep and not _TAG_PART.fullmatch(version)):
            raise ValueError(f"RESNET_MODELS entry {entry.strip()!r}: expected NAME or NAME:VERSION, each of "
                             "lowercase letters, digits, '.', '_' or '-'")
        if name in names:
            raise ValueError(f"RESNET_MODELS names {name!r} twice; a name is served once")
        names.append(name)
        if sep:
            versions.append((name, version))
    if not names:
        raise ValueError("RESNET_MODELS names no model")
    return tuple(names), tuple(versions)


def _model_settings(env: Mapping[str, str], models: tuple[str, ...],
                    default: BatchSettings) -> tuple[tuple[str, BatchSettings], ...]:
    """RESNET_MODEL_SETTINGS: each served model's overrides of ``default``; ValueError names the bad model or key."""
    raw = env.get("RESNET_MODEL_SETTINGS") or "{}"
    try:
        overrides = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"RESNET_MODEL_SETTINGS is not valid JSON: {e}") from None
    if not isinstance(overrides, dict):
        raise ValueError('RESNET_MODEL_SETTINGS must be a JSON object: {"MODEL": {"max_batch_size": N, ...}}')
    known = tuple(f.name for f in fields(BatchSettings))
    settings = []
    for name, keys in overrides.items():
        where = f"RESNET_MODEL_SETTINGS[{name!r}]"
        if name not in models:
            raise ValueError(f"{where}: not a served model (RESNET_MODELS serves {', '.join(models)})")
        if not isinstance(keys, dict):
            raise ValueError(f"{where} must be an object with {' and/or '.join(known)}")
        for key, value in keys.items():
            if key not in known:
                raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")
            # bool is an int in Python; true as a batch size is a mistake, not 1
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}.{key}={json.dumps(value)}: expected an integer of at least 1")
        settings.append((name, replace(default, **keys)))
    return tuple(settings)


@dataclass(frozen=True)
class ServiceConfig:
    models: tuple[str, ...]
    precision: str
    device: str
    device_id: int
    max_batch_size: int
    max_latency_ms: int
    batching: bool
    api_workers: int
    engine_threads: int | None  # None: auto (threads_per_session)
    max_image_bytes: int
    max_pixels: int
    max_body_bytes: int
    max_batch_images: int
    max_top_k: int
    cuda_graphs: bool = False
    prefer_nhwc: bool = False
    max_inflight: int = 24
    retry_after_s: int = 1
    body_timeout_s: int = 30
    drain_quiet_s: float = 1.0
    drain_max_s: float = 30.0
    engine_spin: bool = False
    admit_target_ms: int = 0
    admit_wait_ms: int = 250
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    versions: tuple[tuple[str, str], ...] = ()  # (name, store version) pinned in RESNET_MODELS
    model_batching: tuple[tuple[str, BatchSettings], ...] = ()  # RESNET_MODEL_SETTINGS over the two defaults
    topology: str = "auto"  # service/topology.py
    malloc_trim_s: float = 30.0  # service/allocator.py; 0: never
    cores: int = 1  # usable by this process (usable_cores)

    @property
    def default_model(self) -> str:
        return self.models[0]

    def version(self, name: str) -> str | None:
        """The store version RESNET_MODELS pins for ``name``, or None for the store's latest."""
        return dict(self.versions).get(name)

    def threads_per_session(self, per_worker: bool, input_pixels: int = 0) -> int:
        """onnxruntime intra-op threads of each session: RESNET_ENGINE_THREADS, else all the cores for
        the shared engine, and for a worker's session of a model whose input has at least
        SPLIT_PIXELS pixels (its convolutions are large enough to split: ImageNet's 224x224, not
        Fashion-MNIST's 28x28), else the worker's share of the cores (docs/decisions/017-serving-path.md)."""
        if self.engine_threads is not None:
            return self.engine_threads
        if not per_worker or input_pixels >= SPLIT_PIXELS:
            return self.cores
        return max(1, self.cores // self.api_workers)

    def batch_settings(self, name: str) -> BatchSettings:
        """``name``'s batching: its RESNET_MODEL_SETTINGS entry, else the global RESNET_MAX_BATCH_SIZE
        and RESNET_MAX_LATENCY_MS."""
        return dict(self.model_batching).get(name, BatchSettings(self.max_batch_size, self.max_latency_ms))


def usable_cores() -> int:
    """The CPUs this process may run on (taskset, a container's cpuset), not the machine's count,
    which would oversubscribe a pinned service (docs/decisions/012-usable-cores.md)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_config(env: Mapping[str, str] | None = None) -> ServiceConfig:
    """The settings from ``env`` (default: this process's environment); ValueError names a bad one."""
    env = os.environ if env is None else env
    cores = usable_cores()
    models, versions = _models(env)
    batching = BatchSettings(_int(env, "RESNET_MAX_BATCH_SIZE", 32), _int(env, "RESNET_MAX_LATENCY_MS", 1000))
    return ServiceConfig(
        models=models,
        versions=versions,
        model_batching=_model_settings(env, models, batching),
        precision=_choice(env, "RESNET_PRECISION", "auto", ("auto", "fp32", "fp16", "int8")),
        device=_choice(env, "RESNET_DEVICE", "auto", ("auto", "cuda", "cpu")),
        device_id=_int(env, "RESNET_DEVICE_ID", 0, minimum=0),
        max_batch_size=batching.max_batch_size,
        max_latency_ms=batching.max_latency_ms,
        batching=_choice(env, "RESNET_BATCHING", "on", ("on", "off")) == "on",
        api_workers=_int(env, "RESNET_API_WORKERS", cores),
        engine_threads=None if (env.get("RESNET_ENGINE_THREADS") or "auto") == "auto" else _int(env, "RESNET_ENGINE_THREADS", cores),
        topology=_choice(env, "RESNET_TOPOLOGY", "auto", ("auto", "per-worker", "shared-engine")),
        cores=cores,
        max_image_bytes=_int(env, "RESNET_MAX_IMAGE_BYTES", 10 * 1024 * 1024),
        max_pixels=_int(env, "RESNET_MAX_PIXELS", 40_000_000),
        max_body_bytes=_int(env, "RESNET_MAX_BODY_BYTES", 32 * 1024 * 1024),
        max_header_bytes=_int(env, "RESNET_MAX_HEADER_BYTES", 16 * 1024),
        max_headers=_int(env, "RESNET_MAX_HEADERS", 100),
        max_batch_images=_int(env, "RESNET_MAX_BATCH_IMAGES", 16),
        max_top_k=_int(env, "RESNET_MAX_TOP_K", 100),
        cuda_graphs=_choice(env, "RESNET_CUDA_GRAPHS", "off", ("on", "off")) == "on",
        prefer_nhwc=_choice(env, "RESNET_PREFER_NHWC", "off", ("on", "off")) == "on",
        # Per worker, not split from a total: connections do not spread evenly over the workers
        # (docs/decisions/003-admission-control.md).
        max_inflight=_int(env, "RESNET_MAX_INFLIGHT", 24),
        retry_after_s=_int(env, "RESNET_RETRY_AFTER_S", 1),
        body_timeout_s=_int(env, "RESNET_BODY_TIMEOUT_S", 30),
        drain_quiet_s=_float(env, "RESNET_DRAIN_QUIET_S", 1.0),
        drain_max_s=_float(env, "RESNET_DRAIN_MAX_S", 30.0),
        # Free heap pages returned to the system this often; without it a worker's resident memory
        # crept 24-54 MiB/h under steady load (docs/decisions/018-malloc-trim.md).
        malloc_trim_s=_float(env, "RESNET_MALLOC_TRIM_S", 30.0),
        # Off by default: one target for every served model would shed the clients of a slow one
        # (docs/decisions/003-admission-control.md).
        admit_target_ms=_int(env, "RESNET_ADMIT_TARGET_MS", 0, minimum=0),
        # Waiting absorbs the brief congestion episodes that pass the cap below saturation
        # (docs/decisions/003-admission-control.md).
        admit_wait_ms=_int(env, "RESNET_ADMIT_WAIT_MS", 250, minimum=0),
        # Off: spinning intra-op threads took the API workers' cores
        # (docs/decisions/002-engine-threads-and-spinning.md).
        engine_spin=_choice(env, "RESNET_ENGINE_SPIN", "off", ("on", "off")) == "on",
    )
