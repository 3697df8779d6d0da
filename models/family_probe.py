"""The probe of ``models.train_family``: it times the first steps of each call, every net's step eager
and (--compile auto) the smallest net's compiled, and from them sets the epoch count (before any step
whose learning rate depends on it) and decides whether compiling the rest pays for itself."""
from __future__ import annotations

import logging
import time

import torch

from models.evaluate import evaluate_model
from models.family_net import FamilyNet
from models.family_plan import choose_epochs, compile_pays
from models.registry import get_spec

log = logging.getLogger(__name__)
UNTIMED_STEPS = 3  # cuDNN's autotuner and the allocator's first requests, left out of the timing


class Probe:
    """Times the first steps of each call, every net's step eager and (--compile auto) the smallest
    net's compiled; from them the epoch count (set before any step whose rate depends on it) and
    whether to compile the rest."""

    def __init__(self, run) -> None:
        self.run = run
        steps, spe = run.cfg.probe_steps, run.spe
        self.untimed = UNTIMED_STEPS if spe >= 4 * (UNTIMED_STEPS + steps) else 0
        self.timed = max(1, min(steps, spe // 4 - self.untimed))  # done by step spe // 4: before any /10
        self.phase = "wait"  # wait -> eager -> (compiling -> compiled) -> done
        self.window: tuple[int, float] = (0, 0.0)  # (call step it began at, perf_counter then)
        self.subject: FamilyNet | None = None  # the net whose compiled steps are timed
        self.eager_s = 0.0
        self.base: list[float] = []
        self.rec = run.record.setdefault("compile", {})
        self.auto = run.cfg.compile == "auto" and run.cuda  # on a CPU its compile would cost more than a dry run

    def start_of_call(self) -> None:
        run, rec = self.run, self.rec
        rec.update(setting=run.cfg.compile, mode=run.cfg.compile_mode)
        if run.cfg.compile == "on":
            self._compile(run.nets, "--compile on")
        elif self.auto and "family_saving_per_step_s" in rec:  # measured in an earlier call: does it pay now?
            steps_left = (run.epochs - min(n.epoch for n in run.nets)) * run.spe
            rec["pays"] = compile_pays(rec["family_saving_per_step_s"], rec["family_compile_s_estimate"], steps_left)
            if rec["pays"]:
                self._compile(run.nets, f"auto: the earlier probe says it pays over {steps_left} steps")
            else:
                rec["decision"] = f"eager: the earlier probe says it does not pay over {steps_left} steps"
        elif run.cfg.compile == "auto" and not run.cuda:
            rec["decision"] = "eager: auto compiles on CUDA only (on a CPU it would cost more than a dry run)"
        if self.untimed == 0 and not self._compile_pending():
            self._open("eager")

    def _open(self, phase: str) -> None:
        if self.run.cuda:
            torch.cuda.synchronize()
        self.base = self.run.clock.read()
        self.window, self.phase = (self.run.call_steps, time.perf_counter()), phase

    def _close(self) -> tuple[float, list[float]]:
        """Seconds a step over the window: the family's (wall clock) and each net's."""
        net_s = [b - a for a, b in zip(self.base, self.run.clock.read())]  # read() synchronises on CUDA
        steps = self.run.call_steps - self.window[0]
        return (time.perf_counter() - self.window[1]) / steps, [s / steps for s in net_s]

    def after_step(self, epoch: int, i: int) -> None:
        steps = self.run.call_steps - self.window[0]
        if self.phase == "wait" and self.run.call_steps >= self.untimed and not self._compile_pending():
            self._open("eager")
        elif self.phase == "eager" and steps >= self.timed:
            self._eager_measured(epoch, i)
        elif self.phase == "compiling":  # the step that compiled is behind: time the compiled ones
            self._open("compiled")
        elif self.phase == "compiled" and steps >= self.timed:
            self._compiled_measured(epoch, i)

    def _compile_pending(self) -> bool:
        return any(n.compile_pending for n in self.run.nets)

    def _eager_measured(self, epoch: int, i: int) -> None:
        run = self.run
        family_s, net_s = self._close()
        self.phase = "done"
        probe = {"epoch": epoch + 1, "steps": self.timed, "family_step_s": family_s,
                 "net_epoch_s": {n.tc.model: s * run.spe for n, s in zip(run.nets, net_s)},
                 "compiled": [n.tc.model for n in run.nets if n.forward is not None]}
        log.info("probe: an epoch of the family ~%.1f s (%.4f s a step); of each net: %s", family_s * run.spe,
                 family_s, ", ".join(f"{m} {s:.1f} s" for m, s in probe["net_epoch_s"].items()))
        if run.choose_pending:
            t = time.perf_counter()
            for n in run.nets:
                evaluate_model(n.model, run.data.test_x, run.data.test_y, run.data.mean, run.data.std)
            probe["eval_s"] = time.perf_counter() - t
            run.overhead += probe["eval_s"]
            epoch_s = family_s * run.spe + probe["eval_s"]
            run.set_epochs(choose_epochs(epoch_s, run.cfg.budget_s, run.spent_now(), epoch + (i + 1) / run.spe),
                           f"budget {run.cfg.budget_s:.0f} s, epoch {epoch_s:.2f} s probed")
        run.record.setdefault("probes", []).append(probe)
        eager = [n for n in run.nets if n.forward is None]
        if self.auto and "family_saving_per_step_s" not in self.rec and eager:
            self.subject = min(eager, key=lambda n: get_spec(n.tc.model).depth)  # the cheapest to compile
            self.eager_s = net_s[run.nets.index(self.subject)]
            self._compile([self.subject], "auto: the probe")
            self.phase = "compiling"

    def _compiled_measured(self, epoch: int, i: int) -> None:
        run, net = self.run, self.subject
        _, net_s = self._close()
        self.phase = "done"
        compiled_s = net_s[run.nets.index(net)]
        scale = sum(get_spec(n.tc.model).depth for n in run.nets) / get_spec(net.tc.model).depth  # by layers
        saving = (self.eager_s - compiled_s) * scale
        steps_left = (run.epochs - epoch) * run.spe - i - 1
        pays = compile_pays(saving, net.compile_s * (scale - 1), steps_left)
        self.rec.update(probe_net=net.tc.model, eager_step_s=self.eager_s, compiled_step_s=compiled_s,
                        probe_compile_s=net.compile_s, family_saving_per_step_s=saving, steps_left=steps_left,
                        family_compile_s_estimate=net.compile_s * scale, pays=pays)
        log.info("compile probe on %s: %.1f s to compile, a step %.2f -> %.2f ms: %s", net.tc.model, net.compile_s,
                 1e3 * self.eager_s, 1e3 * compiled_s, "it pays, compiling the rest" if pays else "eager")
        if pays:
            self._compile([n for n in run.nets if n.forward is None], "auto: the probe says it pays")
        elif compiled_s >= self.eager_s:
            net.forward = None
            self.rec["decision"] = f"eager: compiled, {net.tc.model} was no faster"
        else:  # its compile is paid already
            self.rec["decision"] = f"{net.tc.model} alone compiled: for the rest it would not pay"

    def _compile(self, nets: list[FamilyNet], why: str) -> None:
        for n in nets:
            n.compile(self.run.cfg.compile_mode)
        self.rec["decision"] = f"compiled {', '.join(n.tc.model for n in nets)} ({why})"
        log.info("compile: %s", self.rec["decision"])
