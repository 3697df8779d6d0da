"""Trains the depth study's ten nets (resnet20/32/44/56/110, plain20/32/44/56/110) at once, in one
process, on Fashion-MNIST with one recipe and one seed: the paper's (SGD at 0.1, momentum 0.9, weight
decay 5e-4, batch 128, /10 at 50% and 75% of training, 2-pixel random crops and flips), the 110-layer
nets first at 0.01 until their training error falls below 80% (He et al. 2016, Sec. 4.2).

    python -m models.train_family --out runs/family --budget-s 660 --deadline-s 540    # GPU, first call
    python -m models.train_family --out runs/family --resume --deadline-s 540         # second call: finish it
    python -m models.train_family --device cpu --models resnet20,plain20 --train-limit 512 --test-limit 256 \\
        --epochs 2 --out /tmp/family                                                  # a CPU dry run

Each step draws one augmented batch on the device and steps every net on it in turn, from one thread
and with no host sync: the data path is paid once for all the nets, and the GPU works through one net's
kernels while Python launches the next's (nets this small are bound by those launches, which CUDA
streams would not make faster). The data and the augmentation stay on the device as tensors; on CUDA,
bf16 autocast, channels-last and cuDNN's autotuner; on the CPU, models.train's fp32 numerics.

Without --epochs the first steps are timed and the epoch count chosen to fill --budget-s, then chosen
again after each epoch until the first /10 step (the rate does not depend on the count before it).
--compile auto (CUDA) times the smallest net eager and compiled and compiles the rest only if the
step time saved over the steps left exceeds their compile time. --deadline-s ends a call at an epoch
boundary; --resume continues from the last finished epoch (an unfinished epoch is trained again).

Each net's folder under --out holds what models.train writes (train_state.pt, then model.safetensors,
metadata.json and grad_norms.json; wall_time_s is the family's, as the nets shared the machine);
--out/family.json holds the measurements, the choices, each call and each net's history so far.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common.cli import OneLineParser, run_cli
from common.errors import UserError
from common.files import ensure_writable_dir
from models.checkpoint import METADATA_FILE
from models.evaluate import evaluate_model
from models.family_net import FamilyNet
from models.family_plan import NetClock, choose_epochs, rechoose_epochs
from models.family_probe import Probe
from models.recipe import STATE_FILE, TrainConfig, environment, epoch_order, load_device_data, resolve_device, \
    run_metadata, step_batch, write_run
from models.registry import get_spec

log = logging.getLogger(__name__)
FAMILY_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                 "plain20", "plain32", "plain44", "plain56", "plain110")
FAMILY_FILE = "family.json"


@dataclass
class FamilyConfig:
    models: tuple[str, ...] = FAMILY_MODELS
    out: str = "runs/family"
    epochs: int | None = None  # None: as many as budget_s holds, from the measured step time
    budget_s: float = 660.0  # training time to fill, all calls together (epochs chosen from it)
    deadline_s: float | None = None  # this call stops at an epoch boundary before this many seconds
    device: str = "auto"
    compile: str = "auto"  # on | off | auto: on CUDA, when the probe says it pays for itself
    compile_mode: str = "default"  # torch.compile's mode
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_lr: float = 0.01  # He et al. 2016, Sec. 4.2, for ResNet-110
    warmup_until_error: float = 80.0  # training error (%) that ends the warm-up
    warmup_min_depth: int = 110  # nets at least this deep warm up
    warmup_check_steps: int = 50
    seed: int = 0
    train_limit: int | None = None  # the first N training images (CPU dry runs); None: all 60,000
    test_limit: int | None = None
    probe_steps: int = 20  # steps timed for the epoch count and the compile choice


RECIPE_FIELDS = ("batch_size", "lr", "momentum", "weight_decay", "warmup_lr", "warmup_until_error",
                 "warmup_min_depth", "warmup_check_steps", "seed", "train_limit", "test_limit")


def net_config(cfg: FamilyConfig, model: str, epochs: int) -> TrainConfig:
    """The models.train recipe of one net of the family (its own warm-up aside: see FamilyNet)."""
    return TrainConfig(model=model, out=str(Path(cfg.out) / model), epochs=epochs, batch_size=cfg.batch_size,
                       lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, schedule="step",
                       warmup_epochs=0.0, seed=cfg.seed, train_limit=cfg.train_limit, test_limit=cfg.test_limit,
                       grad_norms=True, device=cfg.device)


def _now() -> float:
    return time.monotonic()  # the deadline's clock (tests replace it)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def train_family(cfg: FamilyConfig, resume: bool = False, command: str | None = None) -> dict[str, Any]:
    """Trains (or continues) the family into ``cfg.out``; returns what family.json holds."""
    return _FamilyRun(cfg, resume, command or "python -m models.train_family " + shlex.join(sys.argv[1:])).run()


class _FamilyRun:
    def __init__(self, cfg: FamilyConfig, resume: bool, command: str) -> None:
        self.t0 = _now()
        self.cfg, self.command, self.out = cfg, command, Path(cfg.out)
        self.device = resolve_device(cfg.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:  # speed over bitwise reproducibility: the lease is short
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.autocast = (functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16) if self.cuda
                         else contextlib.nullcontext)
        self.record = self._open_record(resume)
        self.data = load_device_data(cfg.train_limit, cfg.test_limit, self.device)
        self.spe = len(self.data.train_x) // cfg.batch_size  # the last partial batch dropped: one shape to compile
        if self.spe < 1:
            raise UserError(f"{len(self.data.train_x)} training images make no batch of {cfg.batch_size}")
        self.choose_pending = cfg.epochs is None and "epochs" not in self.record
        if cfg.epochs:
            self.record["epochs_from"] = f"--epochs {cfg.epochs}"
        self.epochs = cfg.epochs or self.record.get("epochs") or 10**6  # 10**6: until the probe chooses
        self.nets = [FamilyNet.build(cfg, net_config(cfg, m, self.epochs), self.device, self.data, self.autocast,
                                     resume) for m in cfg.models]
        done = min(n.epoch for n in self.nets)
        recorded = self.record.get("epochs")
        if cfg.epochs and recorded and rechoose_epochs(recorded, cfg.epochs, done * self.spe, self.spe) != cfg.epochs:
            raise UserError(f"--epochs {cfg.epochs}: {self.out} is past the first /10 step of {recorded} epochs; "
                            "resume without --epochs")
        self.clock = NetClock(len(self.nets), self.device)
        self.spent = self.record.get("spent_s", 0.0)  # training seconds, all calls together
        self.epoch_t0 = self.t0
        self.overhead = 0.0  # seconds of the current epoch spent compiling and probing, not training
        self.call_steps = 0
        self.last_epoch_s: float | None = None
        self.probe = Probe(self)

    def _open_record(self, resume: bool) -> dict[str, Any]:
        cfg, path = self.cfg, self.out / FAMILY_FILE
        if not resume:
            files = [path] + [self.out / m / f for m in cfg.models for f in (STATE_FILE, METADATA_FILE)]
            taken = next((p for p in files if p.exists()), None)
            if taken:
                raise UserError(f"{self.out} already holds a family run ({taken}): pass --resume to continue it, "
                                "or choose another --out")
        ensure_writable_dir(self.out)
        record = json.loads(path.read_text()) if resume and path.is_file() else {}
        recipe = {k: getattr(cfg, k) for k in RECIPE_FIELDS}
        diffs = [f"{k}: {record['recipe'].get(k)!r} -> {v!r}" for k, v in recipe.items()
                 if record and record["recipe"].get(k) != v]
        if diffs:
            raise UserError(f"cannot resume {self.out} with a different recipe ({'; '.join(diffs)})")
        record.update(models=list(cfg.models), recipe=recipe, environment=environment(self.device))
        record.setdefault("calls", []).append({"command": self.command, "started": _iso_now()})
        return record

    def set_epochs(self, epochs: int, why: str) -> None:
        if epochs != self.epochs or self.choose_pending:
            log.info("epochs: %d (%s)", epochs, why)
        self.epochs, self.choose_pending = epochs, False
        self.record["epochs_from"] = why
        for n in self.nets:
            n.tc = dataclasses.replace(n.tc, epochs=epochs)

    def spent_now(self) -> float:
        """Training seconds so far, the current epoch's included."""
        return self.spent + _now() - self.epoch_t0

    def run(self) -> dict[str, Any]:
        self.probe.start_of_call()
        epoch, stopped = min(n.epoch for n in self.nets), "finished"
        while epoch < self.epochs:
            left = self.cfg.deadline_s - (_now() - self.t0) if self.cfg.deadline_s else math.inf
            if self.last_epoch_s is not None and self.last_epoch_s > left:
                log.info("deadline: %.0f s left, an epoch takes %.0f s: stopping before epoch %d of %d "
                         "(--resume continues)", left, self.last_epoch_s, epoch + 1, self.epochs)
                stopped = "deadline"
                break
            if not self._train_epoch(epoch):
                stopped = "deadline"
                break
            epoch += 1
        return self._finish(stopped)

    def _train_epoch(self, epoch: int) -> bool:
        """One epoch of every net that has not trained it yet; False when the deadline cut it short."""
        self.epoch_t0, self.overhead = _now(), 0.0
        active = [(k, n) for k, n in enumerate(self.nets) if n.epoch == epoch]
        for _, n in active:
            n.start_epoch(self.device)
        clock_base = self.clock.read()
        tc = active[0][1].tc  # the batches depend on the seed and the epoch only: one draw serves every net
        gen, perm = epoch_order(tc, epoch, len(self.data.train_x), self.device)
        shown = "?" if self.choose_pending else self.epochs
        for i in tqdm(range(self.spe), desc=f"family epoch {epoch + 1}/{shown}", leave=False, disable=None):
            x, y = step_batch(self.data, perm, i, tc, gen)
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            step = epoch * self.spe + i
            for k, n in active:
                self.clock.start(k)
                self.overhead += n.step(x, y, step, self.spe, self.autocast)
                self.clock.stop(k)
                if (i + 1) % self.cfg.warmup_check_steps == 0:
                    n.check_warmup(step)
            self.call_steps += 1
            self.probe.after_step(epoch, i)
            if self.cfg.deadline_s and _now() - self.t0 > self.cfg.deadline_s:
                log.info("deadline passed in epoch %d: its steps are dropped (--resume trains it again)", epoch + 1)
                return False
        net_s = [b - a for a, b in zip(clock_base, self.clock.read())]
        for k, n in active:
            n.end_epoch(epoch, (epoch + 1) * self.spe - 1, self.data, net_s[k])
        epoch_s = _now() - self.epoch_t0
        self.spent += epoch_s
        self.last_epoch_s = epoch_s
        self.record.setdefault("epoch_seconds", []).append(round(epoch_s, 2))
        if self.cfg.epochs is None:  # again from this epoch's own time, until the first /10 step
            clean = max(1e-6, epoch_s - self.overhead)
            wanted = choose_epochs(clean, self.cfg.budget_s, self.spent, epoch + 1)
            chosen = rechoose_epochs(self.epochs, wanted, (epoch + 1) * self.spe, self.spe)
            if chosen != self.epochs:
                self.set_epochs(chosen, f"budget {self.cfg.budget_s:.0f} s, epoch {clean:.2f} s, "
                                        f"{self.spent:.0f} s spent after epoch {epoch + 1}")
        for _, n in active:
            n.save(self.spent)
            log.info("%s", n.summary())
        self._save_record("running")
        return True

    def _finish(self, stopped: str) -> dict[str, Any]:
        chain = "; ".join(c["command"] for c in self.record["calls"])  # every call that made these weights
        for n in self.nets:
            if n.epoch >= self.epochs:
                _, acc = evaluate_model(n.model, self.data.test_x, self.data.test_y, self.data.mean, self.data.std)
                meta = run_metadata(n.tc, self.data, acc, n.history, self.spent, chain, self.device,
                                    config_extra=n.recipe_extra())
                write_run(Path(n.tc.out), n.model, meta, n.grad_log)
        self._save_record(stopped)
        for n in self.nets:
            last = f"{n.history[-1]['test_error']:.2f}%" if n.history else "-"
            log.info("%-10s %3d/%d epochs, test error %s", n.tc.model, n.epoch, self.epochs, last)
        log.info("%s: %.0f s in this call, %.0f s of training in all; %s", stopped, _now() - self.t0, self.spent,
                 self.out / FAMILY_FILE)
        return self.record

    def _save_record(self, status: str) -> None:
        self.record["calls"][-1].update(wall_s=round(_now() - self.t0, 1), status=status)
        self.record.update(budget_s=self.cfg.budget_s, spent_s=round(self.spent, 2), steps_per_epoch=self.spe,
                           train_images=len(self.data.train_x), test_images=len(self.data.test_x),
                           finished=all(n.epoch >= self.epochs for n in self.nets),
                           nets={n.tc.model: n.status() for n in self.nets})
        if not self.choose_pending:
            self.record["epochs"] = self.epochs
        _write_json(self.out / FAMILY_FILE, self.record)


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    d = FamilyConfig()
    p = OneLineParser(prog="python -m models.train_family", description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(FAMILY_MODELS), help="comma-separated CIFAR-style nets")
    p.add_argument("--out", default=d.out, help="one run folder per net, and family.json")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default=d.device)
    p.add_argument("--epochs", type=int, help="train exactly this many (default: as many as --budget-s holds)")
    p.add_argument("--budget-s", type=float, default=d.budget_s, help="training time to fill, all calls together")
    p.add_argument("--deadline-s", type=float, help="end this call at an epoch boundary before this many seconds")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--compile", choices=["on", "off", "auto"], default=d.compile)
    p.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                   default=d.compile_mode)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-lr", type=float, default=d.warmup_lr)
    p.add_argument("--warmup-until-error", type=float, default=d.warmup_until_error)
    p.add_argument("--warmup-min-depth", type=int, default=d.warmup_min_depth)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-limit", type=int, default=0, help="the first N training images (0: all)")
    p.add_argument("--test-limit", type=int, default=0, help="the first N test images (0: all)")
    args = vars(p.parse_args(argv))
    resume = args.pop("resume")
    models = tuple(m.strip() for m in args.pop("models").split(",") if m.strip())
    for m in models:
        if get_spec(m).family != "cifar":
            raise UserError(f"--models: {m} is not one of the CIFAR-style nets (resnet20 ... plain110)")
    if not models or len(set(models)) != len(models):
        raise UserError("--models: name each net once")
    for flag in ("epochs", "budget_s", "deadline_s", "batch_size"):
        if args[flag] is not None and args[flag] <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive")
    for flag in ("train_limit", "test_limit"):
        if args[flag] < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be 0 (all) or positive")
        args[flag] = args[flag] or None
    cfg = FamilyConfig(models=models, **args)
    command = "python -m models.train_family " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
    train_family(cfg, resume=resume, command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
