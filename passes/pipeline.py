"""The default pipeline: canonicalize → fold_weights → fold_bn → (sparsify) → (prune masks) → annotate → insert quantizers
(→ zero biases) (→ calibrate → bias correction)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from qgraph.passes.annotate import AnnotatePass
from qgraph.passes.autocast_float32 import Float32AutocastPass
from qgraph.passes.base import Change, QPass
from qgraph.passes.bias_correction import BiasCorrectionPass, ZeroBiasPass
from qgraph.passes.bitswitch import BitSwitchCalibratePass, BitSwitchPass
from qgraph.passes.calibrate import CalibratePass
from qgraph.passes.canonicalize import CanonicalizePass
from qgraph.passes.float32_casts import Float32CastsPass
from qgraph.passes.fold_bn import FoldBatchNormPass
from qgraph.passes.fold_weights import FoldWeightsPass
from qgraph.passes.insert_quantizers import InsertQuantizersPass
from qgraph.passes.sorted_topk import SortedTopkPass
from qgraph.passes.sparsity import PruneMasksPass, SparsifyPass

from qgraph.bitswitch import BitSwitchRecipe, is_bitswitch
from qgraph.errors import CaptureError, QGraphError, RecipeError
from qgraph.graph import record_shapes
from qgraph.recipes import Recipe
from qgraph.summary import sqnr_db


def prepare_passes(recipe: Recipe, leaves: set[str], fold_bn: bool = True,
                   prune_masks: dict[str, torch.Tensor] | None = None) -> list[QPass]:
    """``prune_masks``: ``{module path: weight mask}`` of a model pruned with ``torch.nn.utils.prune``
    (:func:`qgraph.weight_hooks.copy_with_plain_weights`), kept as masks on the quantized graph."""
    if isinstance(recipe, BitSwitchRecipe):  # BatchNorm stays unfolded: one per bit width
        return [Float32AutocastPass(), Float32CastsPass(), CanonicalizePass(leaves), SortedTopkPass(), FoldWeightsPass(), BitSwitchPass(recipe, leaves)]
    passes: list[QPass] = [Float32AutocastPass(), Float32CastsPass(), CanonicalizePass(leaves), SortedTopkPass(), FoldWeightsPass()]
    if fold_bn:
        passes.append(FoldBatchNormPass())
    if recipe.sparsity is not None:
        passes.append(SparsifyPass(recipe, leaves))
    if prune_masks:
        passes.append(PruneMasksPass(prune_masks))
    passes += [AnnotatePass(recipe), InsertQuantizersPass(recipe, leaves)]
    passes += [method_pass(name, options) for name, options in recipe.methods]
    if recipe.bias_correction:
        passes.append(ZeroBiasPass())
    return passes


# method passes a recipe can ask for (Recipe.methods): name -> (module under qgraph.passes, class)
METHOD_PASSES = {
    "task_scales": ("task_scales", "TaskScalesPass"),
    "group_scales": ("group_scales", "GroupScalesPass"),
    "subset": ("subset", "SubsetPass"),
    "ofq": ("ofq", "OFQPass"),
}


def method_pass(name: str, options: dict) -> QPass:
    """The method pass ``name`` of a recipe, built with ``options``."""
    import importlib

    if name not in METHOD_PASSES:
        raise RecipeError(f"the recipe asks for method pass {name!r}, which this qgraph does not have; known: "
                          f"{', '.join(sorted(METHOD_PASSES))}")
    module, cls = METHOD_PASSES[name]
    try:
        return getattr(importlib.import_module(f"qgraph.passes.{module}"), cls)(**options)
    except TypeError as e:
        raise RecipeError(f"method pass {name!r} does not take the options {sorted(options)}: {e}") from e


def run_passes(gm: fx.GraphModule, passes: list[QPass]) -> list[Change]:
    """Run passes in order, in place; return every recorded change.

    (torch.fx's ``PassManager`` re-raises every failure as a bare ``Exception``; qgraph's own
    errors must reach the user with their type, so they pass through here, naming the passes
    already run.)
    """
    done: list[str] = []
    for p in passes:
        try:
            p.run(gm)
        except QGraphError as e:
            if done:
                e.args = (f"{e.args[0] if e.args else e} (in pass {p.name}, after {', '.join(done)})", *e.args[1:])
            raise
        done.append(p.name)
    return [c for p in passes for c in p.changes]


# a float rewrite (a conv call made functional, BatchNorm folded into the weights) changes the graph's
# outputs only by float rounding; below this, it changed the model
FLOAT_REWRITE_MIN_SQNR_DB = 40.0


def run_float_rewrites(gm: fx.GraphModule, passes: list[QPass], args: tuple) -> list[Change]:
    """Run the passes that rewrite the float model (canonicalize, sorted_topk, fold_weights, fold_bn) and
    check on the example inputs, after each pass that changed something, that the graph still computes
    what it did: a rewrite that alters the model (a dropped in-place op, a wrong fold) raises
    :class:`CaptureError` naming the pass, instead of leaving every number after it silently wrong. An
    optional rewrite (a pass with ``revert``: sorted_topk) is undone instead."""
    with torch.no_grad():
        reference = gm(*args)
    done: list[str] = []
    for p in passes:
        run_passes(gm, [p])
        if p.changes:
            with torch.no_grad():  # a pass that adds nodes or changes dtypes records their tensor_meta again
                worst = output_sqnr_db(reference, record_shapes(gm, args) if getattr(p, "refresh_meta", False) else gm(*args))
            floor = getattr(p, "min_sqnr_db", FLOAT_REWRITE_MIN_SQNR_DB)  # autocast_float32 allows bfloat16 rounding
            if worst < floor and hasattr(p, "revert"):  # an optional rewrite: undone, recorded
                p.revert(gm, f"the model's output depends on the order it returns (output SQNR {worst:.1f} dB sorted)")
            elif worst < floor:
                after = f" (after {', '.join(done)})" if done else ""
                raise CaptureError(f"pass {p.name}{after} changed what the float model computes on the example inputs: "
                                   f"output SQNR {worst:.1f} dB where float rounding stays above {floor:.0f} dB. "
                                   f"This is a qgraph bug; please report it with the model"
                                   + (" (quantize with fold_bn=False avoids this pass)" if p.name == "fold_bn" else ""))
        done.append(p.name)
    return [c for p in passes for c in p.changes]


def output_sqnr_db(reference, got) -> float:
    """The worst SQNR (dB) over the tensors of two output structures; -inf when their structure differs."""
    a, _ = pytree.tree_flatten(reference)
    b, _ = pytree.tree_flatten(got)
    if len(a) != len(b):
        return -math.inf
    worst = math.inf
    for x, y in zip(a, b):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            if isinstance(x, torch.Tensor) and not torch.equal(x, y):
                return -math.inf
            continue
        if x.shape != y.shape:
            return -math.inf
        worst = min(worst, sqnr_db(x, y))
    return worst


def calibrate(gm: fx.GraphModule, batches: Iterable, sync_ranks: bool = False, bias_correction: bool = False) -> list[Change]:
    """Calibrate every quantizer on ``batches``; then, with ``bias_correction``, correct the biases on them."""
    p = BitSwitchCalibratePass(batches, sync_ranks) if is_bitswitch(gm) else CalibratePass(batches, sync_ranks)
    p.run(gm)
    if not bias_correction:
        return p.changes
    bc = BiasCorrectionPass(batches, sync_ranks=sync_ranks)
    bc.run(gm)
    return p.changes + bc.changes
