"""One net of ``models.train_family``: its model, optimizer, warm-up, history and run folder, stepped
on the batches the family shares. Its files are models.train's (models/recipe.py writes both)."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.evaluate import evaluate_model
from models.family_plan import Warmup
from models.recipe import STATE_FILE, DeviceData, EpochStats, TrainConfig, atomic_torch_save, epoch_summary, \
    init_grad_norms, learning_rate, load_run_state, new_grad_log, new_model, run_state, train_step, weight_names
from models.registry import get_spec

log = logging.getLogger(__name__)


@dataclass
class FamilyNet:
    tc: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    names: list[str]
    warmup: Warmup | None
    recipe: dict[str, Any]  # the family's recipe beyond TrainConfig, recorded in the metadata's config
    grad_log: dict[str, Any]
    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)
    forward: nn.Module | None = None  # the compiled wrapper of ``model``, once compiled
    compile_pending: bool = False
    compile_s: float = 0.0
    stats: EpochStats | None = None
    checked: tuple[float, int] = (0.0, 0)  # (wrong, seen) of the epoch at the last warm-up check

    @classmethod
    def build(cls, cfg, tc: TrainConfig, device: torch.device, data: DeviceData, autocast, resume: bool) -> FamilyNet:
        """The net as models.train would start it (same seed, same weights), or as its run folder left it."""
        model, optimizer = new_model(tc, device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        names = weight_names(model)
        deep = get_spec(tc.model).depth >= cfg.warmup_min_depth
        warmup = Warmup(cfg.warmup_lr, cfg.warmup_until_error) if deep else None
        recipe = {"warmup_lr": cfg.warmup_lr, "warmup_until_train_error": cfg.warmup_until_error,
                  "warmup_min_depth": cfg.warmup_min_depth, "warmup_check_steps": cfg.warmup_check_steps,
                  "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
                  "channels_last": device.type == "cuda", "last_partial_batch": "dropped"}
        net = cls(tc, model, optimizer, names, warmup, recipe, new_grad_log(names))
        path = Path(tc.out) / STATE_FILE
        if resume and path.exists():
            state = load_run_state(path, tc, device, may_differ={"epochs"})  # the family re-chooses epochs
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            net.epoch, net.history, net.grad_log = state["epoch"], state["history"], state["grad_norms"]
            if warmup and state.get("warmup"):
                warmup.active, warmup.ended_at_step = state["warmup"]["active"], state["warmup"]["ended_at_step"]
        Path(tc.out).mkdir(parents=True, exist_ok=True)
        if net.grad_log["init"] is None:
            net.grad_log["init"] = init_grad_norms(model, data, tc, names, autocast)
        return net

    def compile(self, mode: str) -> None:
        """Compiles the training forward; it happens on the next step, which times it."""
        self.forward = torch.compile(self.model, mode=mode)
        self.compile_pending = True

    def start_epoch(self, device: torch.device) -> None:
        self.model.train()
        self.stats = EpochStats(len(self.names), device)
        self.checked = (0.0, 0)

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int, steps_per_epoch: int, autocast) -> float:
        """One SGD step on the shared batch; returns the seconds spent compiling (0 but on the first
        compiled step)."""
        lr = learning_rate(self.tc, step, steps_per_epoch)
        lr = self.warmup.learning_rate(lr) if self.warmup else lr
        timing = self.compile_pending
        if timing:
            _sync(x)
            t = time.perf_counter()
        train_step(self.model, self.optimizer, x, y, lr, self.stats, self.names, autocast, self.forward)
        if not timing:
            return 0.0
        _sync(x)
        self.compile_s, self.compile_pending = time.perf_counter() - t, False
        return self.compile_s

    def check_warmup(self, step: int) -> None:
        """Ends the warm-up once the training error of the steps since the last check is low enough."""
        if not (self.warmup and self.warmup.active):
            return
        wrong, seen = self.stats.wrong.item(), self.stats.seen
        window = (wrong - self.checked[0], seen - self.checked[1])
        self.checked = (wrong, seen)
        if self.warmup.check(step, *window):
            log.info("%s: warm-up at lr %g ends after step %d (training error %.1f%% < %g%%)", self.tc.model,
                     self.warmup.lr, step + 1, 100.0 * window[0] / window[1], self.warmup.below)

    def end_epoch(self, epoch: int, last_step: int, data: DeviceData, step_s: float) -> None:
        """Evaluates, and adds the epoch's row (``seconds``: this net's own steps and evaluation)."""
        self.check_warmup(last_step)
        t = time.perf_counter()
        test_loss, test_acc = evaluate_model(self.model, data.test_x, data.test_y, data.mean, data.std)
        seconds = step_s + time.perf_counter() - t
        self.history.append(self.stats.row(epoch + 1, self.optimizer.param_groups[0]["lr"], test_loss, test_acc,
                                           seconds))
        self.grad_log["epochs"].append(self.stats.mean_norms())
        self.epoch = epoch + 1

    def save(self, wall: float) -> None:
        state = run_state(self.tc, self.epoch, self.model, self.optimizer, self.history, wall, self.grad_log)
        if self.warmup:
            state["warmup"] = dataclasses.asdict(self.warmup)
        atomic_torch_save(state, Path(self.tc.out) / STATE_FILE)

    def summary(self) -> str:
        return epoch_summary(self.tc, self.history[-1])

    def recipe_extra(self) -> dict[str, Any]:
        return {**self.recipe, "warmup_ended_at_step": self.warmup.ended_at_step if self.warmup else None}

    def status(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "compiled": self.forward is not None, "compile_s": round(self.compile_s, 2),
                "warmup": dataclasses.asdict(self.warmup) if self.warmup else None, "history": self.history}


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
