"""Recipes: named, declarative descriptions of what gets quantized and how.

A :class:`Recipe` says which op kinds are quantized, the weight :class:`QSpec` and the activation
:class:`QSpec` (``None`` for weight-only recipes). :class:`Override` rules refine it per module
path (glob or regex), op kind or module type; the last matching rule wins. Named recipes live in
one registry filled by :func:`register_recipe`; :func:`get_recipe` raises a :class:`RecipeError`
listing the known names for an unknown one.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from qgraph.errors import RecipeError
from qgraph.granularity import PerChannel, PerGroup, PerTensor
from qgraph.ops import KINDS, WEIGHT_ONLY_KINDS, WEIGHTED_KINDS
from qgraph.qspec import QSpec

if TYPE_CHECKING:
    from qgraph.sparsity import SparsitySpec

_UNSET = object()
DEFAULT_KINDS = ("conv", "conv_transpose", "linear", "matmul", "add")
WEIGHT_ONLY_RECIPE_KINDS = ("conv", "conv_transpose", "linear", "experts")  # experts: mixture-of-experts weights (annotate rule 9)


@dataclass(frozen=True)
class Override:
    """Refine a recipe for matching ops.

    Match by ``name`` (a glob on the module path, e.g. ``"layer4.*"``), ``regex`` (``re.search`` on
    the module path), ``op`` (an op kind: conv, conv_transpose, linear, embedding, experts, matmul, add) or
    ``module_type`` (a class or its name, e.g. ``"Linear"``); all given criteria must match.
    Then ``skip=True`` keeps the op float, or ``weight`` / ``activation`` replace the specs
    (``None`` disables that quantizer).
    """

    name: str | None = None
    regex: str | None = None
    op: str | None = None
    module_type: type | str | None = None
    skip: bool = False
    weight: QSpec | None | object = _UNSET
    activation: QSpec | None | object = _UNSET

    def __post_init__(self) -> None:
        if self.op is not None and self.op not in KINDS:
            raise RecipeError(f"override op {self.op!r} is not an op kind; known: {', '.join(KINDS)}")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise RecipeError(f"override regex {self.regex!r} is invalid: {e}") from e
        if all(v is None for v in (self.name, self.regex, self.op, self.module_type)):
            raise RecipeError("an override needs at least one of name=, regex=, op=, module_type=")

    def matches(self, path: str, kind: str, module_type: type | None) -> bool:
        if self.name is not None and not fnmatch.fnmatchcase(path, self.name):
            return False
        if self.regex is not None and not re.search(self.regex, path):
            return False
        if self.op is not None and self.op != kind:
            return False
        if self.module_type is not None:
            if module_type is None:
                return False
            wanted = self.module_type if isinstance(self.module_type, str) else self.module_type.__name__
            if wanted not in {c.__name__ for c in module_type.__mro__}:
                return False
        return True


@dataclass(frozen=True)
class Decision:
    """What one op gets: a weight spec, an activation spec (inputs and output), or nothing."""

    weight: QSpec | None
    activation: QSpec | None

    @property
    def quantized(self) -> bool:
        return self.weight is not None or self.activation is not None


@dataclass(frozen=True)
class Recipe:
    name: str
    weight: QSpec | None
    activation: QSpec | None
    kinds: tuple[str, ...] = ("conv", "conv_transpose", "linear", "matmul", "add")  # DEFAULT_KINDS
    overrides: tuple[Override, ...] = ()
    description: str = ""
    sparsity: SparsitySpec | None = None  # weight masks (qgraph.sparsity), applied before the weight quantizer
    # method passes run after the quantizers are inserted: ((pass name, JSON-able options), ...),
    # e.g. ("task_scales", {"tasks": ["sr", "denoise"]}); see qgraph.passes.pipeline.METHOD_PASSES
    methods: tuple[tuple[str, dict], ...] = ()
    # after calibration, subtract each weight-quantized layer's mean output shift from its bias
    # (qgraph.passes.bias_correction); post-training only: QAT trains the biases instead
    bias_correction: bool = False

    def with_overrides(self, *overrides: Override) -> Recipe:
        return replace(self, overrides=self.overrides + tuple(overrides))

    def with_learnable_scales(self) -> Recipe:
        """The same recipe with LSQ (learnable) scales, for quantization-aware training."""
        def lsq(s):
            return s.with_(learnable=True) if isinstance(s, QSpec) else s
        ovs = tuple(replace(o, weight=lsq(o.weight), activation=lsq(o.activation)) for o in self.overrides)
        return replace(self, weight=lsq(self.weight), activation=lsq(self.activation), overrides=ovs, bias_correction=False)

    def decide(self, path: str, kind: str, module_type: type | None = None) -> Decision:
        weighted = kind in WEIGHTED_KINDS
        if kind not in self.kinds:
            weight, act = None, None
        else:
            weight = self.weight if weighted else None
            act = self.activation if kind not in WEIGHT_ONLY_KINDS else None
        for o in self.overrides:
            if not o.matches(path, kind, module_type):
                continue
            if o.skip:
                weight, act = None, None
                continue
            if o.weight is not _UNSET and weighted:
                weight = o.weight
            if o.activation is not _UNSET:
                act = o.activation
        if not weighted and act is None:
            weight = None
        return Decision(weight, act)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "weight": self.weight.to_json() if self.weight else None,
            "activation": self.activation.to_json() if self.activation else None,
            "kinds": list(self.kinds),
            "overrides": [_override_json(o) for o in self.overrides],
            **({"sparsity": self.sparsity.to_json()} if self.sparsity is not None else {}),
            **({"methods": [[n, dict(o)] for n, o in self.methods]} if self.methods else {}),
            **({"bias_correction": True} if self.bias_correction else {}),
        }


def recipe_from_json(d: dict) -> Recipe:
    """Inverse of ``Recipe.to_json`` (module types come back as names)."""
    try:
        spec = lambda v: QSpec.from_json(v) if v is not None else None  # noqa: E731
        base = get_recipe(d["factory"], **d.get("options", {})) if "factory" in d else None  # recipes with extra state
        overrides = []
        for o in d.get("overrides", []):
            o = dict(o)
            for k in ("weight", "activation"):
                if k in o:
                    o[k] = spec(o[k])
            overrides.append(Override(**o))
        sparsity = None
        if d.get("sparsity") is not None:
            from qgraph.sparsity import SparsitySpec

            sparsity = SparsitySpec.from_json(d["sparsity"])
        methods = tuple((str(n), dict(o)) for n, o in d.get("methods", []))
        bias_correction = bool(d.get("bias_correction", False))  # files written before it existed: off
        if base is not None:
            return replace(base, overrides=tuple(overrides), sparsity=sparsity, methods=methods or base.methods,
                           bias_correction=bias_correction)
        return Recipe(d["name"], spec(d.get("weight")), spec(d.get("activation")), tuple(d["kinds"]), tuple(overrides),
                      sparsity=sparsity, methods=methods, bias_correction=bias_correction)
    except (KeyError, TypeError, ValueError) as e:
        raise RecipeError(f"not a valid recipe description: {e}") from e


def _override_json(o: Override) -> dict:
    d = {k: getattr(o, k) for k in ("name", "regex", "op", "skip") if getattr(o, k) not in (None, False)}
    if o.module_type is not None:
        d["module_type"] = o.module_type if isinstance(o.module_type, str) else o.module_type.__name__
    for k in ("weight", "activation"):
        v = getattr(o, k)
        if v is not _UNSET:
            d[k] = v.to_json() if v is not None else None
    return d


_REGISTRY: dict[str, Callable[..., Recipe]] = {}


def register_recipe(name: str) -> Callable:
    """Decorator: register a factory ``(**options) -> Recipe`` under ``name``."""
    def deco(fn: Callable[..., Recipe]) -> Callable[..., Recipe]:
        if name in _REGISTRY:
            raise RecipeError(f"recipe {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn
    return deco


def list_recipes() -> list[str]:
    return sorted(_REGISTRY)


def get_recipe(recipe: str | Recipe | list | tuple, **options) -> Recipe:
    """A recipe by name (or a Recipe, returned as is).

    Names may carry arguments, ``"nm(2,4)"``, ``"sparse(ratio=0.7)"``, and recipes compose: a list
    ``["nm(2,4)", "w8a8"]`` or ``"nm(2,4)+w8a8"`` is one sparsity recipe plus one quantization recipe.
    """
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (list, tuple)):
        if options:
            raise RecipeError(f"options {sorted(options)} cannot be given with a list of recipes; write them in the names")
        return compose_recipes([get_recipe(r) for r in recipe])
    if not isinstance(recipe, str):
        raise RecipeError(f"a recipe is a name or a qgraph.Recipe, got {type(recipe).__name__}")
    if "+" in recipe:
        return get_recipe(recipe.split("+"), **options)
    name, args, kwargs = parse_recipe_call(recipe)
    if name not in _REGISTRY:
        raise RecipeError(f"unknown recipe {recipe!r}; known recipes: {', '.join(list_recipes())}")
    try:
        return _REGISTRY[name](*args, **{**kwargs, **options})
    except TypeError as e:
        raise RecipeError(f"recipe {recipe!r} does not take these options {sorted(options) or list(args) + sorted(kwargs)}: {e}") from e


def compose_recipes(recipes: list[Recipe]) -> Recipe:
    """One recipe from a sparsity recipe and a quantization recipe (either may be absent, not doubled)."""
    if not recipes:
        raise RecipeError("an empty list of recipes")
    sparse = [r for r in recipes if r.sparsity is not None]
    quant = [r for r in recipes if r.weight is not None or r.activation is not None]
    if len(sparse) > 1 or len(quant) > 1:
        many = sparse if len(sparse) > 1 else quant
        kind = "sparsity" if len(sparse) > 1 else "quantization"
        raise RecipeError(f"recipes {[r.name for r in many]} are all {kind} recipes; combine at most one sparsity and one quantization recipe")
    if len(recipes) == 1:
        return recipes[0]
    base = quant[0] if quant else sparse[0]
    name = "+".join(r.name for r in recipes)
    return replace(base, name=name, sparsity=sparse[0].sparsity if sparse else None)


def parse_recipe_call(text: str) -> tuple[str, list, dict]:
    """Split a recipe string into ``(name, positional args, keyword args)``.

    ``"w8a8"`` → ``("w8a8", [], {})``; ``"tasks(sr, denoise, bits=3)"`` → ``("tasks", ["sr", "denoise"],
    {"bits": 3})``; ``"bitswitch(bits=(8, 4), keep_first_last=False)"`` → ``("bitswitch", [],
    {"bits": (8, 4), "keep_first_last": False})``. Arguments are Python literals (numbers, strings,
    tuples, lists, dicts, ``True``/``False``/``None``, also lower-case); a bare word is a string.
    Nothing is evaluated. The registered factory receives them as ``factory(*args, **kwargs)``.
    """
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        why = "positional argument after a keyword argument" if "positional argument follows keyword" in str(e) else e.msg
        raise RecipeError(f"cannot read recipe {text!r}: {why}; write NAME or NAME(arg, ..., key=value), e.g. 'nm(2,4)'") from None
    if isinstance(node, ast.Name):
        return node.id, [], {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or any(k.arg is None for k in node.keywords):
        raise RecipeError(f"cannot read recipe {text!r}: write NAME or NAME(arg, ..., key=value), e.g. 'nm(2,4)'")
    return node.func.id, [_recipe_arg(a, text) for a in node.args], {k.arg: _recipe_arg(k.value, text) for k in node.keywords}


_WORDS = {"true": True, "false": False, "none": None}


def _recipe_arg(node: ast.expr, text: str):
    if isinstance(node, ast.Name):
        return _WORDS.get(node.id.lower(), node.id)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise RecipeError(f"cannot read recipe {text!r}: argument {ast.unparse(node)!r} is not a literal") from None


def build_recipe(recipe: str | Recipe, overrides: Iterable[Override] | None = None, skip: Iterable[str] | None = None) -> Recipe:
    """Resolve ``recipe`` and append the user's overrides and skip globs (skips last, so they win)."""
    r = get_recipe(recipe)
    extra = list(overrides or [])
    for o in extra:
        if not isinstance(o, Override):
            raise RecipeError(f"overrides must be qgraph.Override objects, got {type(o).__name__}")
    if isinstance(skip, str):
        skip = [skip]
    extra += [Override(name=pattern, skip=True) for pattern in (skip or [])]
    return r.with_overrides(*extra) if extra else r


# ------------------------------------------------------------------ built-in recipes

def _weight(bits: int, group_size: int | None = None, scale_dtype: str = "float32") -> QSpec:
    g = PerGroup(group_size) if group_size else PerChannel(0)
    return QSpec(bits=bits, symmetric=True, signed=True, granularity=g, scale_dtype=scale_dtype)


def _activation(bits: int = 8, observer: str = "minmax") -> QSpec:
    return QSpec(bits=bits, symmetric=False, signed=False, granularity=PerTensor(), observer=observer)


@register_recipe("w8a8")
def w8a8(observer: str = "minmax", bias_correction: bool = True) -> Recipe:
    """int8 symmetric per-channel weights, uint8 asymmetric per-tensor activations (ONNX Runtime's integer kernels);
    embedding tables int8 per row and mixture-of-experts weights int8 per expert and output channel (both
    weight-only). Post-training, layer biases absorb the mean shift that
    quantization causes (``bias_correction``, measured on the calibration data), as in every weight recipe below."""
    return Recipe("w8a8", _weight(8), _activation(8, observer), kinds=(*DEFAULT_KINDS, "embedding", "experts"),
                  description=w8a8.__doc__,
                  bias_correction=bias_correction)


@register_recipe("w4a8")
def w4a8(observer: str = "minmax", bias_correction: bool = True) -> Recipe:
    """int4 symmetric per-channel weights, uint8 activations."""
    return Recipe("w4a8", _weight(4), _activation(8, observer), kinds=(*DEFAULT_KINDS, "experts"), description=w4a8.__doc__,
                  bias_correction=bias_correction)


@register_recipe("w8a16")
def w8a16(bias_correction: bool = True) -> Recipe:
    """Weight-only int8 per-channel; activations stay float."""
    return Recipe("w8a16", _weight(8), None, kinds=WEIGHT_ONLY_RECIPE_KINDS, description=w8a16.__doc__,
                  bias_correction=bias_correction)


@register_recipe("w4a16")
def w4a16(group_size: int = 128, bias_correction: bool = True) -> Recipe:
    """Weight-only int4: linear layers in groups of ``group_size`` along the input dimension, convs per channel; float16 scales."""
    return Recipe("w4a16", _weight(4, group_size, "float16"), None, kinds=WEIGHT_ONLY_RECIPE_KINDS, description=w4a16.__doc__,
                  bias_correction=bias_correction)


@register_recipe("w2a16")
def w2a16(group_size: int = 64, bias_correction: bool = True) -> Recipe:
    """Weight-only int2 in groups of ``group_size`` (linear), per channel (conv); float16 scales."""
    return Recipe("w2a16", _weight(2, group_size, "float16"), None, kinds=WEIGHT_ONLY_RECIPE_KINDS, description=w2a16.__doc__,
                  bias_correction=bias_correction)


__all__ = ["Recipe", "Override", "Decision", "register_recipe", "get_recipe", "list_recipes", "build_recipe", "recipe_from_json",
           "compose_recipes", "parse_recipe_call"]
