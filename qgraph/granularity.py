"""Granularity value objects: which elements share one scale."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""

    def __str__(self) -> str:
        return "per-tensor"


@dataclass(frozen=True)
class PerChannel:
    """One scale per slice along ``axis`` (output channels of a weight: axis 0)."""

    axis: int = 0

    def __str__(self) -> str:
        return f"per-channel(axis={self.axis})"


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``size`` consecutive elements along the last axis, per row."""

    size: int = 128

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"group size must be positive, got {self.size}")

    def __str__(self) -> str:
        return f"per-group({self.size})"


Granularity = PerTensor | PerChannel | PerGroup


def granularity_from_json(d: dict) -> Granularity:
    kind = d.get("kind")
    if kind == "per_tensor":
        return PerTensor()
    if kind == "per_channel":
        return PerChannel(int(d.get("axis", 0)))
    if kind == "per_group":
        return PerGroup(int(d["size"]))
    raise ValueError(f"unknown granularity {d!r}")


def granularity_to_json(g: Granularity) -> dict:
    if isinstance(g, PerTensor):
        return {"kind": "per_tensor"}
    if isinstance(g, PerChannel):
        return {"kind": "per_channel", "axis": g.axis}
    return {"kind": "per_group", "size": g.size}
