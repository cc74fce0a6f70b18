"""Recipes: named, declarative descriptions of what gets quantized and how.

A :class:`Recipe` says which op kinds are quantized, the weight :class:`QSpec` and the activation
:class:`QSpec` (``None`` for weight-only recipes). :class:`Override` rules refine it per module
path (glob or regex), op kind or module type; the last matching rule wins. Named recipes live in
one registry filled by :func:`register_recipe`; :func:`get_recipe` raises a :class:`RecipeError`
listing the known names for an unknown one.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from qgraph.errors import RecipeError
from qgraph.granularity import PerChannel, PerGroup, PerTensor
from qgraph.ops import KINDS, WEIGHT_ONLY_KINDS, WEIGHTED_KINDS
from qgraph.qspec import QSpec

_UNSET = object()
DEFAULT_KINDS = ("conv", "conv_transpose", "linear", "matmul", "add")


@dataclass(frozen=True)
class Override:
    """Refine a recipe for matching ops.

    Match by ``name`` (a glob on the module path, e.g. ``"layer4.*"``), ``regex`` (``re.search`` on
    the module path), ``op`` (an op kind: conv, conv_transpose, linear, embedding, matmul, add) or
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
    # method passes run after the quantizers are inserted: ((pass name, JSON-able options), ...),
    # e.g. ("task_scales", {"tasks": ["sr", "denoise"]}); see qgraph.passes.pipeline.METHOD_PASSES
    methods: tuple[tuple[str, dict], ...] = ()

    def with_overrides(self, *overrides: Override) -> Recipe:
        return replace(self, overrides=self.overrides + tuple(overrides))

    def with_learnable_scales(self) -> Recipe:
        """The same recipe with LSQ (learnable) scales, for quantization-aware training."""
        def lsq(s):
            return s.with_(learnable=True) if isinstance(s, QSpec) else s
        ovs = tuple(replace(o, weight=lsq(o.weight), activation=lsq(o.activation)) for o in self.overrides)
        return replace(self, weight=lsq(self.weight), activation=lsq(self.activation), overrides=ovs)

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
            **({"methods": [[n, dict(o)] for n, o in self.methods]} if self.methods else {}),
        }


def recipe_from_json(d: dict) -> Recipe:
    """Inverse of ``Recipe.to_json`` (module types come back as names)."""
    try:
        spec = lambda v: QSpec.from_json(v) if v is not None else None  # noqa: E731
        overrides = []
        for o in d.get("overrides", []):
            o = dict(o)
            for k in ("weight", "activation"):
                if k in o:
                    o[k] = spec(o[k])
            overrides.append(Override(**o))
        methods = tuple((str(n), dict(o)) for n, o in d.get("methods", []))
        return Recipe(d["name"], spec(d.get("weight")), spec(d.get("activation")), tuple(d["kinds"]), tuple(overrides),
                      methods=methods)
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


def get_recipe(recipe: str | Recipe, **options) -> Recipe:
    """A recipe by name (or a Recipe, returned as is)."""
    if isinstance(recipe, Recipe):
        return recipe
    if not isinstance(recipe, str):
        raise RecipeError(f"a recipe is a name or a qgraph.Recipe, got {type(recipe).__name__}")
    name, args, kwargs = parse_recipe_call(recipe)
    if name not in _REGISTRY:
        raise RecipeError(f"unknown recipe {recipe!r}; known recipes: {', '.join(list_recipes())}")
    try:
        return _REGISTRY[name](*args, **{**kwargs, **options})
    except TypeError as e:
        raise RecipeError(f"recipe {recipe!r} does not take these options {sorted(options)}: {e}") from e


_CALL = re.compile(r"\s*([A-Za-z_][\w.-]*)\s*(?:\((.*)\))?\s*", re.S)


def parse_recipe_call(text: str) -> tuple[str, list, dict]:
    """Split a recipe string into ``(name, positional args, keyword args)``.

    ``"w8a8"`` → ``("w8a8", [], {})``; ``"tasks(sr, denoise, bits=3)"`` → ``("tasks", ["sr", "denoise"],
    {"bits": 3})``; ``"bitswitch(8,6,4,2)"`` → ``("bitswitch", [8, 6, 4, 2], {})``. Arguments are
    comma-separated; each is an int, a float, ``true``/``false``/``none`` or else a string (quotes
    optional). The registered factory receives them as ``factory(*args, **kwargs)``.
    """
    m = _CALL.fullmatch(text)
    if m is None:
        raise RecipeError(f"cannot read recipe {text!r}: expected NAME or NAME(arg, ..., key=value)")
    name, inner = m.group(1), m.group(2)
    args: list = []
    kwargs: dict = {}
    if inner is not None and inner.strip():
        for part in inner.split(","):
            key, eq, value = part.partition("=")
            if eq and re.fullmatch(r"\s*[A-Za-z_]\w*\s*", key):
                kwargs[key.strip()] = _recipe_arg(value, text)
            elif not kwargs:
                args.append(_recipe_arg(part, text))
            else:
                raise RecipeError(f"cannot read recipe {text!r}: positional argument {part.strip()!r} after a keyword argument")
    return name, args, kwargs


def _recipe_arg(value: str, text: str):
    v = value.strip()
    if not v:
        raise RecipeError(f"cannot read recipe {text!r}: empty argument")
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


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
def w8a8(observer: str = "minmax") -> Recipe:
    """int8 symmetric per-channel weights, uint8 asymmetric per-tensor activations (ONNX Runtime's integer kernels);
    embedding tables int8 per row (weight-only)."""
    return Recipe("w8a8", _weight(8), _activation(8, observer), kinds=(*DEFAULT_KINDS, "embedding"), description=w8a8.__doc__)


@register_recipe("w4a8")
def w4a8(observer: str = "minmax") -> Recipe:
    """int4 symmetric per-channel weights, uint8 activations."""
    return Recipe("w4a8", _weight(4), _activation(8, observer), description=w4a8.__doc__)


@register_recipe("w8a16")
def w8a16() -> Recipe:
    """Weight-only int8 per-channel; activations stay float."""
    return Recipe("w8a16", _weight(8), None, kinds=("conv", "conv_transpose", "linear"), description=w8a16.__doc__)


@register_recipe("w4a16")
def w4a16(group_size: int = 128) -> Recipe:
    """Weight-only int4: linear layers in groups of ``group_size`` along the input dimension, convs per channel; float16 scales."""
    return Recipe("w4a16", _weight(4, group_size, "float16"), None, kinds=("conv", "conv_transpose", "linear"), description=w4a16.__doc__)


@register_recipe("w2a16")
def w2a16(group_size: int = 64) -> Recipe:
    """Weight-only int2 in groups of ``group_size`` (linear), per channel (conv); float16 scales."""
    return Recipe("w2a16", _weight(2, group_size, "float16"), None, kinds=("conv", "conv_transpose", "linear"), description=w2a16.__doc__)


__all__ = ["Recipe", "Override", "Decision", "register_recipe", "get_recipe", "list_recipes", "build_recipe", "recipe_from_json",
           "parse_recipe_call"]
