"""Task-specific scales (TSQ-MTC), SLLD and QSLAW group gains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qgraph
from qgraph.errors import InputError, RecipeError
from qgraph.group_scales import MixedWarmup, fold_gains, gain_parameters, gain_quantizers
from qgraph.primitives import choose_qparams, fake_quantize_affine
from qgraph.recipes import parse_recipe_call
from qgraph.task_scales import TaskFakeQuantize, task_quantizers


class Body(nn.Module):
    """conv → relu → conv (a tiny shared body)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def _data():
    g = torch.Generator().manual_seed(0)
    a = [torch.rand(2, 3, 8, 8, generator=g) for _ in range(2)]            # task "a": values in [0, 1]
    b = [4 * torch.randn(2, 3, 8, 8, generator=g) - 1 for _ in range(2)]   # task "b": wider, signed
    return a, b


@pytest.fixture(scope="module")
def tasks_model():
    torch.manual_seed(0)
    body = Body().eval()
    a, b = _data()
    qm = qgraph.quantize(body, a[0], "tasks(a,b)", calib_data={"a": a, "b": b})
    return body, qm, a, b


def test_recipe_strings():
    assert parse_recipe_call("tasks(sr, denoise,derain)") == ("tasks", ["sr", "denoise", "derain"], {})
    assert parse_recipe_call("bitswitch(8,6,4,2)") == ("bitswitch", [8, 6, 4, 2], {})
    assert parse_recipe_call("nm(2,4)") == ("nm", [2, 4], {})
    assert parse_recipe_call("tasks(a,b,bits=3)") == ("tasks", ["a", "b"], {"bits": 3})
    assert parse_recipe_call("w8a8") == ("w8a8", [], {})
    r = qgraph.get_recipe("tasks(sr,denoise,derain)")
    assert r.methods == (("task_scales", {"tasks": ["sr", "denoise", "derain"], "body": None, "init": "observer"}),)
    assert (r.weight.bits, r.activation.bits, r.weight.learnable, r.activation.learnable) == (4, 4, True, True)
    assert qgraph.get_recipe("tasks(x,y,bits=3)").activation.bits == 3
    assert qgraph.get_recipe("tasks", names=["x", "y"]).methods[0][1]["tasks"] == ["x", "y"]
    assert qgraph.recipes.recipe_from_json(r.to_json()).methods == r.methods
    with pytest.raises(RecipeError, match="unique"):
        qgraph.get_recipe("tasks(a,a)")
    with pytest.raises(RecipeError, match="unknown recipe"):
        qgraph.get_recipe("nosuch(1,2)")
    with pytest.raises(RecipeError, match="positional argument"):
        parse_recipe_call("tasks(bits=3, a)")


def test_scales_differ_per_task_and_come_from_each_tasks_data(tasks_model):
    _, qm, a, b = tasks_model
    tq = task_quantizers(qm.qgraph)
    assert tq and all(isinstance(q, TaskFakeQuantize) for q in tq.values())
    assert not any(isinstance(q, TaskFakeQuantize) for q in qm.quantizers().values() if q.role == "weight")
    for q in tq.values():
        sa, sb = q.task_qparams("a")[0], q.task_qparams("b")[0]
        assert not torch.equal(sa, sb), q.where
    # the input quantizer's pairs are the min-max grids of each task's own batches
    inq = qm.qgraph.get_submodule("c1.input_quantizer")
    for task, xs in (("a", a), ("b", b)):
        lo, hi = torch.stack([x.min() for x in xs]).min(), torch.stack([x.max() for x in xs]).max()
        s, z = choose_qparams(lo, hi, 0, 15, symmetric=False)
        assert torch.equal(inq.task_qparams(task)[0], s) and torch.equal(inq.task_qparams(task)[1], z)
    assert inq.task_qparams("b")[0] > 3 * inq.task_qparams("a")[0]
    assert qm.tasks == ("a", "b")
    with pytest.raises(InputError, match="unknown task 'c'.*a, b"):
        qm.set_task("c")
    fields = inq.report_fields()
    assert set(fields["task_scales"]) == {"a", "b"}


def _manual(qm, body, x, task):
    """The body by hand: fake-quant with ``task``'s activation pairs and the shared weight scales."""
    def act(name, v):
        q = qm.qgraph.get_submodule(name)
        s, z = q.task_qparams(task)
        return fake_quantize_affine(v, s, z, q.spec.qmin, q.spec.qmax, q.spec.granularity)

    def weight(name, w):
        q = qm.qgraph.get_submodule(name)
        return fake_quantize_affine(w, q.effective_scale(), q.zero_point, q.spec.qmin, q.spec.qmax, q.spec.granularity)

    h = nn.functional.conv2d(act("c1.input_quantizer", x), weight("c1.weight_quantizer", body.c1.weight), body.c1.bias, padding=1)
    h = act("c1.output_quantizer", torch.relu(h))
    y = nn.functional.conv2d(h, weight("c2.weight_quantizer", body.c2.weight), body.c2.bias, padding=1)
    return act("c2.output_quantizer", y)


def test_switching_task_changes_outputs_as_the_scales_predict(tasks_model):
    body, qm, a, b = tasks_model
    assert sorted(task_quantizers(qm.qgraph)) == ["c1.input_quantizer", "c1.output_quantizer", "c2.output_quantizer"]
    x = b[0]
    with torch.no_grad():
        outs = {}
        for t in ("a", "b"):
            with qm.task(t):
                outs[t] = qm(x)
            assert torch.equal(outs[t], _manual(qm, body, x, t))
        assert not torch.equal(outs["a"], outs["b"])
        ref = body(x)
        assert (outs["b"] - ref).abs().mean() < (outs["a"] - ref).abs().mean()  # b's own grid fits b's data better
        prev = qm.set_task("b")
        assert torch.equal(qm(x), outs["b"])
        qm.set_task(prev)


def test_export_and_load_round_trip_per_task(tasks_model, tmp_path):
    body, qm, a, b = tasks_model
    res = qm.export(str(tmp_path / "body"), task="b")  # ONNX for task b, checked in ONNX Runtime by export
    assert res.max_abs_error <= res.tolerance
    meta = qgraph.backends.qpack.read_qpack(res.qpack_path).meta
    assert meta["tasks"]["names"] == ["a", "b"] and "c1.input_quantizer" in meta["tasks"]["tables"]
    with torch.no_grad():
        for t, x in (("a", a[1]), ("b", b[1])):
            loaded = qgraph.load(res.qpack_path, Body(), task=t)
            with qm.task(t):
                assert torch.equal(loaded(x), qm(x))
    assert qm.set_task("a") is not None  # export did not change the active task of qm: restore a known one


def test_calibration_errors(tasks_model):
    body, _, a, b = tasks_model
    with pytest.raises(InputError, match="no batches for b"):
        qgraph.quantize(body, a[0], "tasks(a,b)", calib_data={"a": a})
    with pytest.raises(InputError, match="no task-specific scales"):
        qgraph.quantize(body, a[0], "w8a8", calib_data={"a": a})
    plain = qgraph.quantize(body, a[0], "w8a8", calib_data=a)
    with pytest.raises(InputError, match="no task-specific scales"):
        plain.set_task("a")


def test_slld_loss_reaches_the_active_tasks_scales_only(tasks_model):
    body, qm, a, b = tasks_model
    assert float(qgraph.ssim(b[0], b[0])) == pytest.approx(1.0)
    code = qm.qgraph.code
    qm.set_task("b")
    with qgraph.SLLD(qm, blocks=["c1", "c2"]) as slld:
        qm(b[0])
        terms = slld.terms()
        assert set(terms) == {"c1", "c2"} and all(0.0 < float(v.detach()) < 1.0 for v in terms.values())
        q = qm.qgraph.get_submodule("c1.output_quantizer")
        q.task_scale.grad = None
        slld.loss().backward()
        assert q.task_scale.grad[1] != 0 and q.task_scale.grad[0] == 0
    assert qm.qgraph.code == code
    qm.set_task("a")
    qm.zero_grad()
    with pytest.raises(InputError, match="no operations"):
        qgraph.SLLD(qm, blocks=["nosuch"])


def test_qslaw_gains_fold_bit_for_bit_and_export(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 64), nn.GELU(), nn.Linear(64, 8)).eval()
    x = torch.randn(8, 256)
    qm = qgraph.quantize(model, x, "qslaw(bits=4, group_size=32)", calib_data=[x])
    assert sorted(gain_quantizers(qm.qgraph)) == ["0.weight_quantizer", "2.weight_quantizer"]
    gains = gain_parameters(qm)
    loss = (qm(x) - model(x)).pow(2).mean()
    loss.backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gains)
    with torch.no_grad():
        for g in gains:
            g.uniform_(0.7, 1.3)
        w = qm.qgraph.get_parameter("0.weight")
        q = qm.qgraph.get_submodule("0.weight_quantizer")
        before = q(w).clone()
        y = qm(x)
        plain = fake_quantize_affine(w, q.scale, q.zero_point, q.spec.qmin, q.spec.qmax, q.spec.granularity)
        assert not torch.equal(before, plain)  # the gains do change the codes
        res = qm.export(str(tmp_path / "lm"))   # export folds a copy: qm keeps its gains
        assert not torch.equal(gains[0], torch.ones_like(gains[0]))
        assert fold_gains(qm) == 2
        assert torch.equal(q(w), before) and torch.equal(w, before)  # W is now Ŵ, and Ŵ maps to itself
        assert torch.equal(qm(x), y)
        loaded = qgraph.load(res.qpack_path, nn.Sequential(nn.Linear(256, 64), nn.GELU(), nn.Linear(64, 8)))
        assert not gain_quantizers(loaded.qgraph) and loaded.recipe.methods == ()
        assert torch.equal(loaded(x), y)


def test_mixed_warmup_schedule():
    new, orig = iter(range(1000)), iter(range(1000, 2000))
    sched = list(MixedWarmup(new, orig, steps=400, warmup_steps=100, mix=1.0, seed=1))
    assert all(s == "new" for s, _ in sched[:100])
    share = sum(s == "original" for s, _ in sched[100:]) / 300
    assert 0.4 < share < 0.6
    ramp = MixedWarmup([], [], steps=0, warmup_steps=10, ramp_steps=10)
    assert ramp.p_original(9) == 0.0 and ramp.p_original(10) == pytest.approx(0.05) and ramp.p_original(30) == 0.5
