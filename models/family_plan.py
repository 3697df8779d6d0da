"""The decisions ``models.train_family`` takes from what it measures, as pure functions: how many
epochs fit the budget, whether torch.compile pays for itself, when the 110-layer warm-up ends; and
the per-net clock that measures them."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch


def choose_epochs(epoch_s: float, budget_s: float, spent_s: float = 0.0, done_epochs: float = 0.0) -> int:
    """As many epochs as ``budget_s`` holds: the ``done_epochs`` already trained (which took ``spent_s``)
    plus what is left at ``epoch_s`` an epoch, rounded down, but never fewer than the epoch under way."""
    if epoch_s <= 0:
        raise ValueError(f"epoch_s must be positive, not {epoch_s}")
    fit = math.floor(done_epochs + max(0.0, budget_s - spent_s) / epoch_s + 1e-9)
    return max(fit, math.floor(done_epochs) + 1, 1)


def before_first_decay(epochs: int, done_steps: int, steps_per_epoch: int) -> bool:
    """Whether every step done so far ran at the base rate under the step schedule with ``epochs``
    epochs (/10 from step total // 2): until then the epoch count may still change."""
    return done_steps <= (epochs * steps_per_epoch) // 2


def rechoose_epochs(current: int, wanted: int, done_steps: int, steps_per_epoch: int) -> int:
    """``wanted``, if changing the count leaves the learning rate of the steps already taken as it was;
    once the first /10 step is behind, ``current`` stays."""
    if not before_first_decay(current, done_steps, steps_per_epoch):
        return current
    epochs = max(wanted, math.ceil(done_steps / steps_per_epoch), 1)
    while not before_first_decay(epochs, done_steps, steps_per_epoch):
        epochs += 1
    return epochs


def compile_pays(saving_per_step_s: float, compile_s: float, steps_left: int) -> bool:
    """Whether compiling pays for itself within the run: the step time it saves over the steps left
    against the compile time still to be paid."""
    return saving_per_step_s > 0 and saving_per_step_s * steps_left > compile_s


@dataclass
class Warmup:
    """He et al. 2016, Sec. 4.2: ResNet-110 trains at 0.01 "until the training error is below 80% (about
    400 iterations), and then go back to 0.1". The caller checks it every few steps on the error of the
    steps since the last check: one host sync a check, and only while the warm-up lasts."""

    lr: float = 0.01
    below: float = 80.0  # training error, %
    active: bool = True
    ended_at_step: int | None = None

    def learning_rate(self, scheduled: float) -> float:
        return min(self.lr, scheduled) if self.active else scheduled

    def check(self, step: int, wrong: float, seen: int) -> bool:
        """Ends the warm-up when ``wrong`` of ``seen`` is below the threshold; True when it just ended."""
        if self.active and seen and 100.0 * wrong / seen < self.below:
            self.active, self.ended_at_step = False, step
            return True
        return False


class NetClock:
    """Seconds each net has spent on its own steps in this call: CUDA events on the GPU (read, with one
    sync, only when asked), the wall clock on the CPU (where every op is done before the next)."""

    def __init__(self, nets: int, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.totals = [0.0] * nets
        self.spans: list[list] = [[] for _ in range(nets)]
        self._open: object = None

    def start(self, i: int) -> None:
        if self.cuda:
            self._open = torch.cuda.Event(enable_timing=True)
            self._open.record()
        else:
            self._open = time.perf_counter()

    def stop(self, i: int) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.spans[i].append((self._open, end))
        else:
            self.totals[i] += time.perf_counter() - self._open

    def read(self) -> list[float]:
        """Each net's seconds so far (subtract two reads for a window)."""
        if self.cuda:
            torch.cuda.synchronize()
            for i, spans in enumerate(self.spans):
                self.totals[i] += sum(a.elapsed_time(b) for a, b in spans) / 1000
                spans.clear()
        return list(self.totals)
