"""The default pipeline: canonicalize → fold_weights → fold_bn → (sparsify) → annotate → insert quantizers
(→ zero biases) (→ calibrate → bias correction)."""

from __future__ import annotations

from collections.abc import Iterable

import torch.fx as fx
from qgraph.passes.annotate import AnnotatePass
from qgraph.passes.base import Change, QPass
from qgraph.passes.bias_correction import BiasCorrectionPass, ZeroBiasPass
from qgraph.passes.bitswitch import BitSwitchCalibratePass, BitSwitchPass
from qgraph.passes.calibrate import CalibratePass
from qgraph.passes.canonicalize import CanonicalizePass
from qgraph.passes.fold_bn import FoldBatchNormPass
from qgraph.passes.fold_weights import FoldWeightsPass
from qgraph.passes.insert_quantizers import InsertQuantizersPass
from qgraph.passes.sparsity import SparsifyPass

from qgraph.bitswitch import BitSwitchRecipe, is_bitswitch
from qgraph.errors import QGraphError, RecipeError
from qgraph.recipes import Recipe


def prepare_passes(recipe: Recipe, leaves: set[str], fold_bn: bool = True) -> list[QPass]:
    if isinstance(recipe, BitSwitchRecipe):  # BatchNorm stays unfolded: one per bit width
        return [CanonicalizePass(leaves), FoldWeightsPass(), BitSwitchPass(recipe, leaves)]
    passes: list[QPass] = [CanonicalizePass(leaves), FoldWeightsPass()]
    if fold_bn:
        passes.append(FoldBatchNormPass())
    if recipe.sparsity is not None:
        passes.append(SparsifyPass(recipe, leaves))
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


def calibrate(gm: fx.GraphModule, batches: Iterable, sync_ranks: bool = False, bias_correction: bool = False) -> list[Change]:
    """Calibrate every quantizer on ``batches``; then, with ``bias_correction``, correct the biases on them."""
    p = BitSwitchCalibratePass(batches, sync_ranks) if is_bitswitch(gm) else CalibratePass(batches, sync_ranks)
    p.run(gm)
    if not bias_correction:
        return p.changes
    bc = BiasCorrectionPass(batches, sync_ranks=sync_ranks)
    bc.run(gm)
    return p.changes + bc.changes
