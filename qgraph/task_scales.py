"""Task-specific activation scales (TSQ-MTC's TLMAQ, ALGORITHMS.md §1).

One shared low-bit body serves several tasks; each activation quantizer of the body keeps one
(step, zero point) pair per task and the known task id picks the pair (a lookup, not a router):

* :class:`TaskFakeQuantize`: the quantizer. ``task_scale[T]`` and ``task_zero_point[T]`` are LSQ+
  parameters (the zero point is real-valued and rounded with a straight-through estimator in the
  forward, so the grid stays integer and exportable); only the active task's pair gets gradients.
  It runs on :func:`qgraph.primitives.fake_quantize_affine` with the active pair.
* the recipe ``tasks(names, bits=4)`` (``"tasks(sr,denoise,derain)"`` as a string): int4 symmetric
  per-channel learnable weight scales shared by every task, uint4 per-tensor activations with one
  pair per task; the ``task_scales`` method pass swaps the activation quantizers of the body.
* :func:`set_task` / :func:`task` select the task (``QModel.set_task`` / ``QModel.task`` delegate here);
  :func:`single_task_copy` gives a plain one-task model for ONNX export.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import nn

from qgraph.errors import CalibrationError, InputError, RecipeError
from qgraph.granularity import PerChannel, PerTensor
from qgraph.observers import Observer
from qgraph.primitives import MIN_SCALE, fake_quantize_affine
from qgraph.qspec import QSpec
from qgraph.quantizer import FakeQuantize, round_scale, scale_gradients_flow
from qgraph.recipes import DEFAULT_KINDS, Recipe, register_recipe

INITS = ("observer", "lsq")


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` in the forward, identity in the backward."""
    return x + (torch.round(x) - x).detach()


class TaskFakeQuantize(FakeQuantize):
    """An activation quantizer with one (scale, zero point) pair per task (TLMAQ).

    ``scale`` and ``zero_point`` read as the active task's pair, so code written for
    :class:`FakeQuantize` (summaries, reports, tolerances) sees the grid in use. Calibration keeps
    one observer per task: the batches of task ``t`` (run while ``t`` is active) set ``t``'s pair.
    ``init="observer"`` takes the spec's observer (min-max, percentile or MSE range);
    ``init="lsq"`` the LSQ rule ``s = 2·mean|x|/sqrt(Qp)``, zero point 0 (or mid-grid when the
    task's values go below zero).
    """

    def __init__(self, spec: QSpec, tasks: tuple[str, ...], where: str = "", init: str = "observer") -> None:
        nn.Module.__init__(self)
        if not isinstance(spec.granularity, PerTensor):
            raise RecipeError(f"task-specific scales are per-tensor; {where or 'a quantizer'} asks for {spec.granularity}")
        if init not in INITS:
            raise RecipeError(f"task scale init must be one of {', '.join(INITS)}, got {init!r}")
        self.spec, self.role, self.where = spec, "activation", where
        self.tasks = tuple(tasks)
        self.init = init
        self.active = 0
        self.mode = "observe"
        self._refresh = False
        self.observer = None
        self._observers: list[Observer | None] = [None] * len(self.tasks)
        self._abs: list[list[float]] = [[0.0, 0.0, 0.0] for _ in self.tasks]  # sum|x|, count, min (LSQ init)
        if spec.learnable:
            self.task_scale = nn.Parameter(torch.zeros(0))
            self.task_zero_point = nn.Parameter(torch.zeros(0))
        else:
            self.register_buffer("task_scale", torch.zeros(0))
            self.register_buffer("task_zero_point", torch.zeros(0))

    # ----------------------------------------------------------------- the active pair
    @property
    def task_name(self) -> str:
        return self.tasks[self.active]

    @property
    def initialized(self) -> bool:
        return self.task_scale.numel() > 0

    @property
    def scale(self) -> torch.Tensor:
        return self.task_scale[self.active] if self.initialized else self.task_scale

    @property
    def zero_point(self) -> torch.Tensor:
        return self._zero_point_ste() if self.initialized else self.task_zero_point

    def _zero_point_ste(self, i: int | None = None) -> torch.Tensor:
        z = self.task_zero_point[self.active if i is None else i]
        return torch.clamp(_round_ste(z), self.spec.qmin, self.spec.qmax)

    def effective_scale(self, i: int | None = None) -> torch.Tensor:
        s = self.task_scale[self.active if i is None else i]
        return round_scale(s.abs().clamp_min(MIN_SCALE), self.spec.scale_dtype)

    def task_qparams(self, task: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (scale, zero point) the grid uses for ``task``, detached."""
        i = self.index(task)
        with torch.no_grad():
            return self.effective_scale(i).detach().clone(), self._zero_point_ste(i).detach().clone()

    def index(self, task: str) -> int:
        if task not in self.tasks:
            raise InputError(f"unknown task {task!r} for the quantizer at {self.where or '?'}; its tasks: {', '.join(self.tasks)}")
        return self.tasks.index(task)

    def set_task(self, task: str) -> None:
        self.active = self.index(task)

    # ----------------------------------------------------------------- calibration
    def set_mode(self, mode: str) -> None:
        super().set_mode(mode)
        self.observer = None
        if mode == "observe":
            self._observers = [None] * len(self.tasks)
            self._abs = [[0.0, 0.0, 0.0] for _ in self.tasks]

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        i = self.active
        if self._observers[i] is None:
            self._observers[i] = Observer(self.spec)
        self._observers[i].update(x)
        a = self._abs[i]
        a[0] += float(x.detach().abs().sum())
        a[1] += x.numel()
        a[2] = min(a[2], float(x.detach().min()))

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Each task's pair from what that task's batches showed; a task that showed nothing is an error."""
        scales, zps = [], []
        for i, t in enumerate(self.tasks):
            obs = self._observers[i]
            if obs is None or obs.min_val is None:
                if self.initialized:
                    scales.append(self.task_scale[i].detach().abs().clone())
                    zps.append(self.task_zero_point[i].detach().clone())
                    continue
                raise CalibrationError(f"activation quantizer at {self.where or '?'} saw no data for task {t!r}: "
                                       f"the calibration batches of {t!r} never reached this part of the model")
            if self.init == "lsq":
                total, count, low = self._abs[i]
                s = torch.tensor(max(2.0 * total / max(count, 1) / math.sqrt(self.spec.qmax), MIN_SCALE))
                z = torch.tensor(0.0 if low >= -1e-5 else float((self.spec.qmax + 1) // 2 + self.spec.qmin))
            else:
                s, z = obs.compute()
            scales.append(s.reshape(()).float())
            zps.append(z.reshape(()).float())
        self._set_table(torch.stack(scales), torch.stack(zps))
        self._observers = [None] * len(self.tasks)
        self.mode = "quantize"

    @torch.no_grad()
    def _set_table(self, scales: torch.Tensor, zps: torch.Tensor) -> None:
        scales = round_scale(scales.float(), self.spec.scale_dtype)
        for name, value in (("task_scale", scales), ("task_zero_point", zps.float())):
            current = getattr(self, name)
            if isinstance(current, nn.Parameter):
                current.data = value.clone()
            else:
                setattr(self, name, value.clone())

    @torch.no_grad()
    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor, task: str | None = None) -> None:
        """Set one task's pair (the active task's by default)."""
        if not self.initialized:
            self._set_table(torch.ones(len(self.tasks)), torch.zeros(len(self.tasks)))
        i = self.active if task is None else self.index(task)
        self.task_scale.data[i] = round_scale(scale.detach().float().reshape(()), self.spec.scale_dtype)
        self.task_zero_point.data[i] = zero_point.detach().float().reshape(())

    def init_from(self, x: torch.Tensor) -> None:
        raise CalibrationError(f"the task-specific quantizer at {self.where or '?'} is calibrated per task "
                               "(calib_data={task: batches}), not from one tensor")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("task_scale", "task_zero_point"):
            key = prefix + name
            current = getattr(self, name)
            if key in state_dict and current.shape != state_dict[key].shape:
                value = torch.empty_like(state_dict[key], dtype=torch.float32)
                if isinstance(current, nn.Parameter):
                    current.data = value
                else:
                    setattr(self, name, value)
        if prefix + "task_scale" in state_dict:
            self.mode = "quantize"
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------- forward
    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        factor = self.grad_factor(x) if spec.learnable and scale_gradients_flow() else 1.0
        return fake_quantize_affine(x, self.effective_scale(), self._zero_point_ste(), spec.qmin, spec.qmax,
                                    spec.granularity, factor)

    def scale_range(self) -> tuple[float, float] | None:
        if not self.initialized:
            return None
        s = float(self.effective_scale().detach())
        return s, s

    def extra_repr(self) -> str:
        return f"{self.role} {self.spec.describe()}, tasks={','.join(self.tasks)}, active={self.task_name}, mode={self.mode}"

    def report_fields(self) -> dict:
        """Every task's grid, for ``qm.report`` and its HTML page."""
        out = {"tasks": list(self.tasks), "active_task": self.task_name}
        if self.initialized:
            out["task_scales"] = {t: float(self.effective_scale(i).detach()) for i, t in enumerate(self.tasks)}
            out["task_zero_points"] = {t: float(self._zero_point_ste(i).detach()) for i, t in enumerate(self.tasks)}
        return out

    def single_task(self, task: str) -> FakeQuantize:
        """A plain :class:`FakeQuantize` on ``task``'s grid (same outputs, bit for bit)."""
        s, z = self.task_qparams(task)
        q = FakeQuantize(self.spec.with_(learnable=False), "activation", where=self.where)
        q.set_qparams(s, z)
        q.mode, q.observer = "quantize", None
        q.training = self.training
        return q


# --------------------------------------------------------------------------- model-level helpers


def task_quantizers(module: nn.Module) -> dict[str, TaskFakeQuantize]:
    return {n: m for n, m in module.named_modules() if isinstance(m, TaskFakeQuantize)}


def task_names(module: nn.Module) -> tuple[str, ...]:
    """The tasks of a model with task-specific scales (``()`` for other models)."""
    names = {m.tasks for m in task_quantizers(module).values()}
    if len(names) > 1:
        raise InputError(f"the model's task quantizers disagree on the task list: {sorted(names)}")
    return next(iter(names), ())


def current_task(module: nn.Module) -> str | None:
    qs = list(task_quantizers(module).values())
    return qs[0].task_name if qs else None


def set_task(module: nn.Module, task: str) -> str | None:
    """Select ``task``'s scale set in every task quantizer of ``module``; returns the previous task."""
    names = task_names(module)
    if not names:
        raise InputError(f"set_task({task!r}): this model has no task-specific scales (quantize it with the "
                         "'tasks(...)' recipe, e.g. recipe='tasks(sr,denoise)')")
    if task not in names:
        raise InputError(f"unknown task {task!r}; this model's tasks: {', '.join(names)}")
    previous = current_task(module)
    for q in task_quantizers(module).values():
        q.set_task(task)
    return previous


@contextlib.contextmanager
def task(module: nn.Module, name: str):
    """``with task(qm, "denoise"): ...`` runs with ``denoise``'s scales, then restores the previous task."""
    previous = set_task(module, name)
    try:
        yield module
    finally:
        set_task(module, previous)


def single_task_copy(qm, task: str | None = None):
    """A copy of ``qm`` whose task quantizers are plain quantizers on ``task``'s grid (the active task
    when ``task`` is None), for ONNX export. ``qm`` itself when it has no task scales and no task is asked."""
    names = task_names(qm)
    if not names:
        if task is not None:
            raise InputError(f"export(task={task!r}): this model has no task-specific scales")
        return qm
    task = task if task is not None else current_task(qm)
    if task not in names:
        raise InputError(f"unknown task {task!r}; this model's tasks: {', '.join(names)}")
    out = copy.deepcopy(qm)
    for name, q in task_quantizers(out).items():
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, child, q.single_task(task))
    return out


def qpack_meta(qm) -> dict:
    """The additive ``meta["tasks"]`` entry of a qpack (names and where each task table is)."""
    qs = task_quantizers(qm.qgraph)
    if not qs:
        return {}
    return {"tasks": {
        "names": list(task_names(qm)),
        "tables": {n: {"scale": f"{n}.task_scale", "zero_point": f"{n}.task_zero_point"} for n in sorted(qs)},
    }}


# --------------------------------------------------------------------------- recipe


def _names(names) -> tuple[str, ...]:
    if len(names) == 1 and isinstance(names[0], (list, tuple)):
        names = tuple(names[0])
    names = tuple(str(n).strip() for n in names)
    if len(names) < 1 or any(not n for n in names):
        raise RecipeError(f"tasks(...) needs one or more non-empty task names, got {list(names)}")
    if len(set(names)) != len(names):
        raise RecipeError(f"task names must be unique, got {list(names)}")
    return names


@register_recipe("tasks")
def tasks_recipe(*args, names=None, bits: int = 4, weight_bits: int | None = None, body: str | None = None, init: str = "observer",
                 observer: str = "minmax", weight_observer: str = "minmax") -> Recipe:
    """Task-specific scales (TSQ-MTC): int<bits> per-channel learnable weight scales shared by all tasks;
    uint<bits> per-tensor activations with one learnable (scale, zero point) pair per task in the body
    (module-path glob ``body``, default everything quantized). ``tasks(sr,denoise)``, ``tasks(["a","b"], bits=3)``."""
    if names is not None and args:
        raise RecipeError("give the task names either positionally or as names=, not both")
    names = _names(args if names is None else (names,))
    if init not in INITS:
        raise RecipeError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    wb = weight_bits if weight_bits is not None else bits
    weight = QSpec(bits=wb, symmetric=True, signed=True, granularity=PerChannel(0), observer=weight_observer, learnable=True)
    act = QSpec(bits=bits, symmetric=False, signed=False, granularity=PerTensor(), observer=observer, learnable=True)
    opts = {"tasks": list(names), "body": body, "init": init}
    label = f"tasks({','.join(names)})" + (f" w{wb}a{bits}" if (wb, bits) != (4, 4) else "")
    return Recipe(label, weight, act, kinds=DEFAULT_KINDS, methods=(("task_scales", opts),), description=tasks_recipe.__doc__)


__all__ = ["TaskFakeQuantize", "task_quantizers", "task_names", "current_task", "set_task", "task", "single_task_copy",
           "qpack_meta", "tasks_recipe"]
