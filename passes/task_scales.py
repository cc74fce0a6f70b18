"""Task-specific scales (TSQ-MTC, ALGORITHMS.md §1): the two passes behind the ``tasks(...)`` recipe.

* :class:`TaskScalesPass` (a recipe method pass, after insert_quantizers): every activation
  quantizer whose module path matches ``body`` (a glob; default every one) becomes a
  :class:`qgraph.task_scales.TaskFakeQuantize` with one (scale, zero point) pair per task. Weight
  quantizers stay shared by all tasks (per-channel learnable scales).
* :class:`TaskCalibratePass`: per-task calibration from ``{task: batches}``. Task ``t``'s batches
  run while ``t`` is active, so each task quantizer fills ``t``'s pair from ``t``'s data only; shared
  quantizers (weights, activations outside the body) see the batches of every task.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

import torch.fx as fx
from qgraph.passes.base import QPass
from qgraph.passes.calibrate import CalibratePass
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.errors import InputError
from qgraph.quantizer import FakeQuantize
from qgraph.task_scales import TaskFakeQuantize, set_task, task_names, task_quantizers


class TaskScalesPass(QPass):
    name = "task_scales"

    def __init__(self, tasks: list[str], body: str | None = None, init: str = "observer") -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.body = body
        self.init = init

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for name, q in list(gm.named_modules()):
            if not isinstance(q, FakeQuantize) or isinstance(q, TaskFakeQuantize) or q.role != "activation":
                continue
            if self.body is not None and not fnmatch.fnmatchcase(q.where, self.body):
                continue
            parent, _, child = name.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, child, TaskFakeQuantize(q.spec, self.tasks, q.where, self.init))
            self.record("replaced", name, q.where, f"activation quantizer → {len(self.tasks)} task scale sets "
                                                   f"({', '.join(self.tasks)}), init {self.init}")
            modified = True
        return PassResult(gm, modified)


class TaskCalibratePass(CalibratePass):
    """Calibrate from ``{task: batches}``: every task's batches run with that task active."""

    name = "calibrate_tasks"

    def __init__(self, data: Mapping[str, Iterable], sync_ranks: bool = False) -> None:
        super().__init__((), sync_ranks)
        self.data = {str(k): list(v) for k, v in data.items()}

    def call(self, gm: fx.GraphModule) -> PassResult:
        names = task_names(gm)
        if not names:
            raise InputError("calib_data is a {task: batches} mapping, but the recipe has no task-specific scales "
                             "(use recipe='tasks(...)', or pass one iterable of batches)")
        unknown = sorted(set(self.data) - set(names))
        missing = [t for t in names if not self.data.get(t)]
        if unknown or missing:
            raise InputError(f"calib_data must give batches for each task of the model ({', '.join(names)}): "
                             + (f"unknown {', '.join(unknown)}; " if unknown else "")
                             + (f"no batches for {', '.join(missing)}" if missing else ""))

        def batches():
            for t in names:
                set_task(gm, t)
                yield from self.data[t]

        self.batches = batches()
        result = super().call(gm)
        set_task(gm, names[0])
        for qname, q in sorted(task_quantizers(gm).items()):
            per_task = ", ".join(f"{t} {s:.3g}/{z:g}" for t, (s, z) in
                                 ((t, tuple(float(v) for v in q.task_qparams(t))) for t in names))
            self.record("task scales", qname, q.where, f"scale/zero point per task: {per_task}")
        return result


def calibrate_tasks(gm: fx.GraphModule, data: Mapping[str, Iterable], sync_ranks: bool = False) -> list:
    p = TaskCalibratePass(data, sync_ranks)
    p.run(gm)
    return p.changes


__all__ = ["TaskScalesPass", "TaskCalibratePass", "calibrate_tasks"]
