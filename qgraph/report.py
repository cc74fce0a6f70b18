"""``qm.report(data)``: per-layer error report of a quantized model, with a sensitivity ranking.

A :class:`Report` is plain JSON-able data (``report.data``) with views on it:

* ``table()``: one line per layer (terminal);
* ``to_json(path)`` / ``Report.from_json(path)``: the data, round-tripped;
* ``to_html(path)``: one self-contained page (graph explorer, plots; see ``qgraph.html_report``);
* ``ranking``: layer nodes, most sensitive first (lowest model-output SQNR when that layer alone
  is quantized); ``recipe_overrides(keep, bits)`` turns the top of it into :class:`Override` rules
  for a mixed-precision recipe, ``recipe(keep, bits)`` into the whole recipe.

What each number means is in ``qgraph.layer_metrics``. Quantizers may add fields of their own to
the report (shown generically by the HTML page) by defining ``report_fields() -> dict``; a report
can carry per-setting variants (``with_variants``) for models that switch bits or tasks.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping

import torch
import torch.fx as fx

from qgraph.errors import InputError, RecipeError
from qgraph.granularity import PerChannel, PerGroup
from qgraph.layer_metrics import Analysis, Histogram, analyse, grid_range
from qgraph.meta import ANNOTATION_KEY
from qgraph.qspec import QSpec
from qgraph.quantizer import FakeQuantize
from qgraph.recipes import Override, Recipe, recipe_from_json

REPORT_FORMAT = "qgraph.report"
REPORT_VERSION = 1
MAX_VALUES = 64  # scales / zero points listed per quantizer (the rest summarised by min / max)


class Report:
    """Per-layer error report (see the module docstring). ``data`` is the JSON document."""

    def __init__(self, data: dict) -> None:
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise InputError(f"not a qgraph report (expected \"format\": \"{REPORT_FORMAT}\")")
        self.data = data

    # ----------------------------------------------------------------- views
    @property
    def layers(self) -> list[dict]:
        return self.data["layers"]

    @property
    def ranking(self) -> list[str]:
        """Layer node names, most sensitive first."""
        return list(self.data["ranking"])

    def layer(self, name: str) -> dict:
        """A layer by node name or module path."""
        for ly in self.layers:
            if name in (ly["node"], ly["module"]):
                return ly
        raise InputError(f"no layer {name!r} in this report; layers: {', '.join(ly['node'] for ly in self.layers)}")

    def table(self) -> str:
        from qgraph.report_text import format_report

        return format_report(self)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        m = self.data["model"]
        return f"<qgraph Report {m['recipe']['name']}: {len(self.layers)} layers, output SQNR {_fmt_db(m['output']['sqnr_db'])} dB>"

    def to_json(self, path: str | None = None) -> str:
        """The report as JSON (infinite SQNRs written as the strings "inf" / "-inf"); also written to ``path``."""
        text = json.dumps(_finite(self.data), indent=1)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_json(cls, source: str) -> Report:
        """A report from a JSON string or a file path."""
        text = source
        if not source.lstrip().startswith("{"):
            try:
                with open(source) as f:
                    text = f.read()
            except OSError as e:
                raise InputError(f"cannot read report {source}: {e}") from e
        try:
            data = json.loads(text, parse_constant=float)
        except json.JSONDecodeError as e:
            raise InputError(f"report is not valid JSON: {e}") from e
        return cls(_infinite(data))

    def to_html(self, path: str, *, title: str | None = None) -> str:
        """Write the self-contained HTML explorer to ``path``; returns the path."""
        from qgraph.html_report import write_html

        return write_html(self, path, title=title)

    # ----------------------------------------------------------------- mixed precision
    def recipe_overrides(self, keep: int = 3, bits: int | None = 8) -> list[Override]:
        """Overrides that keep the ``keep`` most sensitive layers at ``bits`` (weights and activations
        that are quantized; ``bits=None`` keeps them float). Layers without a module path (a residual
        add of the root module) cannot be named by an override and are passed over."""
        if not isinstance(keep, int) or keep < 0:
            raise RecipeError(f"keep must be a non-negative integer, got {keep!r}")
        chosen = [ly for ly in (self.layer(n) for n in self.ranking) if ly["module"]][:keep]
        out = []
        for ly in chosen:
            regex = f"^{re.escape(ly['module'])}$"
            if bits is None:
                out.append(Override(regex=regex, op=ly["op"], skip=True))
                continue
            w = QSpec.from_json(ly["weight_spec"]).with_(bits=bits) if ly["weight_spec"] else None
            a = QSpec.from_json(ly["activation_spec"]).with_(bits=bits) if ly["activation_spec"] else None
            out.append(Override(regex=regex, op=ly["op"], weight=w, activation=a))
        return out

    def recipe(self, keep: int = 3, bits: int | None = 8) -> Recipe:
        """The report's recipe with :meth:`recipe_overrides` appended (name suffixed ``+mixed``)."""
        from dataclasses import replace

        base = recipe_from_json(self.data["model"]["recipe"])
        return replace(base.with_overrides(*self.recipe_overrides(keep, bits)), name=f"{base.name}+mixed")

    # ----------------------------------------------------------------- variants
    def with_variants(self, switch: str, reports: dict) -> Report:
        """A copy whose layers also carry the metrics of ``reports`` (one per setting, e.g. per bit
        width of a bit-switching model) under ``layer["variants"][switch][setting]``; the HTML page
        shows a switcher for each ``switch``."""
        data = json.loads(self.to_json())
        data.setdefault("switches", {})[switch] = [str(k) for k in reports]
        for ly in data["layers"]:
            for key, rep in reports.items():
                try:
                    other = rep.layer(ly["node"])
                except InputError:
                    continue
                ly.setdefault("variants", {}).setdefault(switch, {})[str(key)] = {
                    k: other.get(k) for k in ("bits", "cumulative", "local", "output_alone", "weight_sqnr_db", "clipped")}
        return Report(_infinite(data))


# ====================================================================== building


def build_report(qm, data=None, *, local: bool = True, max_batches: int | None = None, switches: bool = True) -> Report:
    """Measure ``qm`` (a QModel) against its float graph on ``data`` (a batch, a tuple of inputs,
    or a list of batches; default: the example inputs). ``local=False`` skips the one-layer-at-a-time
    runs (no local error, no ranking); ``max_batches`` caps how many batches are used.

    ``switches``: for a bit-switch model also measure it at every bit width of its recipe, and for a
    model with task-specific scales under every task (cumulative errors only), attached with
    :meth:`Report.with_variants` so the HTML page shows a ``bits`` / ``task`` switcher. The model's
    current bits / task are restored afterwards."""
    rep = _measure(qm, data, local, max_batches)
    if not switches:
        return rep
    from qgraph.bitswitch import is_bitswitch

    if is_bitswitch(qm) and getattr(qm.recipe, "bits", None):
        saved = qm.get_bits()
        try:
            variants = {}
            for b in qm.recipe.bits:
                qm.set_bits(b)
                variants[b] = _measure(qm, data, False, max_batches)
        finally:
            qm.set_bits(saved)
        rep = rep.with_variants("bits", variants)
    if qm.tasks:
        variants = {}
        for t in qm.tasks:
            with qm.task(t):
                variants[t] = _measure(qm, data, False, max_batches)
        rep = rep.with_variants("task", variants)
    return rep


def _measure(qm, data, local: bool, max_batches: int | None) -> Report:
    fg = qm._float_graph
    if fg is None:
        raise InputError("this QModel has no float reference graph to compare with")
    batches = _batches(data, qm)
    if max_batches is not None:
        batches = batches[:max_batches]
    if not batches:
        raise InputError("report data is empty")
    was = qm.training
    qm.eval()
    try:
        an = analyse(qm.qgraph, fg, batches, local=local)
        return Report(_assemble(qm, an, local))
    finally:
        qm.train(was)


def _batches(data, qm) -> list[tuple]:
    """The report's batches as the graph's positional inputs; for a half-precision model (quantized as
    float32, :mod:`qgraph.precision`) in float32, as calling the model casts them."""
    from qgraph.precision import float32_inputs

    batches = _input_tuples(data, qm)
    return [float32_inputs(b) for b in batches] if qm.qgraph.capture.upcast else batches


def _input_tuples(data, qm) -> list[tuple]:
    from qgraph.capture import batch_inputs

    if data is None:
        return [qm._example_inputs]
    if isinstance(data, torch.Tensor) or isinstance(data, Mapping):  # one batch (a mapping: inputs by name)
        return [batch_inputs(qm.qgraph, data)]
    if isinstance(data, tuple) and all(isinstance(t, torch.Tensor) for t in data):
        return [data]
    if isinstance(data, Iterable):
        return [batch_inputs(qm.qgraph, b) for b in data]
    raise InputError(f"report data must be a tensor, a tuple of tensors or an iterable of batches, got {type(data).__name__}")


def _assemble(qm, an: Analysis, local: bool) -> dict:
    from qgraph.graph_diff import graph_json

    qg = qm.qgraph
    layers = []
    for ly in an.layers:
        ann = ly.node.meta[ANNOTATION_KEY]
        name = ly.node.name
        weight_q = [q for q in ly.quantizers if qg.get_submodule(q).role == "weight"]
        out_q = str(ly.qend.target) if ly.qend is not ly.end and ly.node.op != "get_attr" else None
        w = _weight_of(qg, weight_q[0]) if weight_q else None
        entry = {
            "node": name,
            "module": ann.module_path,
            "op": ann.kind,
            "bits": (f"w{ann.weight.bits}" if ann.weight else "w-") + (f"a{ann.activation.bits}" if ann.activation else "a-"),
            "weight_spec": ann.weight.to_json() if ann.weight else None,
            "activation_spec": ann.activation.to_json() if ann.activation else None,
            "weight_desc": ann.weight.describe() if ann.weight else "float",
            "activation_desc": ann.activation.describe() if ann.activation else "float",
            "cumulative": an.cumulative[name].to_json() if name in an.cumulative and an.cumulative[name].count else None,
            "local": an.local[name].to_json() if name in an.local and an.local[name].count else None,
            "output_alone": an.output_alone[name].to_json() if name in an.output_alone and an.output_alone[name].count else None,
            "weight_sqnr_db": _weight_sqnr(qg, weight_q[0], w) if w is not None else None,
            "weight_range": [float(w.min()), float(w.max())] if w is not None and w.numel() else None,
            "sparsity": float((w == 0).float().mean()) if w is not None and w.numel() else None,
            "activation_range": list(an.act_range[name]) if name in an.act_range else None,
            "activation_grid": list(grid_range(qg.get_submodule(out_q))) if out_q and grid_range(qg.get_submodule(out_q)) else None,
            "clipped": an.clipped.get(out_q) if out_q else None,
            "quantizers": ly.quantizers,
        }
        layers.append(entry)
    ranked = sorted((ly for ly in layers if ly["output_alone"]), key=lambda ly: ly["output_alone"]["sqnr_db"])
    for i, ly in enumerate(ranked):
        ly["rank"] = i + 1
    quantizers = {}
    owner = {q: ly["node"] for ly in layers for q in ly["quantizers"]}
    for qname, q in qg.named_modules():
        if isinstance(q, FakeQuantize):
            quantizers[qname] = _quantizer_state(qg, qname, q, an, owner.get(qname))
    cap = qg.capture
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "qgraph_version": __import__("qgraph").__version__,
        "model": {
            "recipe": qm.recipe.to_json(),
            "capture": {"route": cap.route, "leaves": cap.leaves, "notes": cap.notes},
            "batches": an.batches,
            "output": an.output.to_json(),
            "top1_agreement": an.top1_agreement,
            "local": local,
        },
        "layers": layers,
        "ranking": [ly["node"] for ly in ranked],
        "quantizers": quantizers,
        "changes": [{"pass": c.pass_name, "action": c.action, "node": c.node, "module": c.module_path, "detail": c.detail}
                    for c in qm.changes],
        "graph": graph_json(qm._float_graph, qg, qm.changes),
        "switches": {},
    }


def _get_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _weight_of(qg: fx.GraphModule, qname: str) -> torch.Tensor | None:
    """The float weight a weight quantizer reads (a ``get_attr`` before it, or its wrapper's weight)."""
    for n in qg.graph.nodes:
        if n.op == "call_module" and str(n.target) == qname and n.args and getattr(n.args[0], "op", None) == "get_attr":
            return _get_attr(qg, n.args[0].target).detach()
    parent = qname.rpartition(".")[0]
    try:
        return qg.get_submodule(parent).module.weight.detach()
    except AttributeError:
        return None


def _weight_sqnr(qg, qname: str, w: torch.Tensor) -> float:
    from qgraph.layer_metrics import ErrorStats

    q = qg.get_submodule(qname)
    with torch.no_grad():
        s = ErrorStats()
        s.add(w, q(w))
    return s.sqnr_db


def _widest_slice(w: torch.Tensor, q: FakeQuantize) -> tuple[torch.Tensor, int, float, float, str]:
    """The elements sharing the largest scale: (values, index, scale, zero point, what they are)."""
    scale = q.effective_scale().detach().reshape(-1)
    zp = q.zero_point.detach().reshape(-1) if q.zero_point.numel() else torch.zeros(1)
    i = int(scale.argmax()) if scale.numel() > 1 else 0
    g = q.spec.granularity
    z = float(zp[i] if zp.numel() > 1 else zp[0])
    if scale.numel() == 1:
        return w.flatten(), 0, float(scale[0]), z, "all weights"
    if isinstance(g, PerChannel):
        return w.select(g.axis % w.dim(), i).flatten(), i, float(scale[i]), z, f"channel {i} (widest of {scale.numel()})"
    if isinstance(g, PerGroup):
        return w.reshape(-1, g.size)[i], i, float(scale[i]), z, f"group {i} (widest of {scale.numel()})"
    return w.flatten(), i, float(scale[i]), z, "all weights"


def _quantizer_state(qg, qname: str, q: FakeQuantize, an: Analysis, layer: str | None) -> dict:
    state = {
        "role": q.role, "layer": layer, "where": q.where, "spec": q.spec.describe(), "bits": q.spec.bits,
        "qmin": q.spec.qmin, "qmax": q.spec.qmax, "mode": q.mode, "initialized": q.initialized,
        "granularity": str(q.spec.granularity),
    }
    if q.initialized:
        s = q.effective_scale().detach().float().reshape(-1)
        z = q.zero_point.detach().float().reshape(-1)
        state["scale"] = {"count": s.numel(), "min": float(s.min()), "max": float(s.max()), "values": s[:MAX_VALUES].tolist()}
        state["zero_point"] = {"count": z.numel(), "min": float(z.min()) if z.numel() else 0.0,
                               "max": float(z.max()) if z.numel() else 0.0, "values": z[:MAX_VALUES].tolist()}
    if q.role == "weight" and q.initialized:
        w = _weight_of(qg, qname)
        if w is not None and w.numel():
            vals, _, sc, zp, what = _widest_slice(w.float(), q)
            h = Histogram.spanning(vals, (sc * (q.spec.qmin - zp), sc * (q.spec.qmax - zp)))
            h.add(vals)
            state["hist"] = {**h.to_json(), "of": f"float weights, {what}"}
            state["grid"] = {"scale": sc, "zero_point": zp}
            state["sparsity"] = float((w == 0).float().mean())
    elif q.role == "activation" and qname in an.act_hist:
        state["hist"] = {**an.act_hist[qname].to_json(), "of": "values reaching this quantizer"}
        g = grid_range(q)
        if g is not None:
            state["grid"] = {"scale": float(q.effective_scale().detach().reshape(-1)[0]), "zero_point": float(q.zero_point.detach().reshape(-1)[0])}
        if qname in an.clipped:
            state["clipped"] = an.clipped[qname]
    fields = getattr(q, "report_fields", None)
    if callable(fields):
        state["extra"] = _finite(fields())
    return state


def _fmt_db(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.1f}"


def _finite(obj):
    """JSON-safe copy: infinities become "inf" / "-inf", NaN becomes null, tensors become lists."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        return ("inf" if obj > 0 else "-inf") if math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _finite(obj.tolist())
    return obj


def _infinite(obj):
    if obj in ("inf", "-inf") and isinstance(obj, str):
        return math.inf if obj == "inf" else -math.inf
    if isinstance(obj, dict):
        return {k: _infinite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_infinite(v) for v in obj]
    return obj
