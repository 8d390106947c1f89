"""The grid sampler's search space: every value of every param (:func:`grid`), and what it cannot
search, checked when the sweep file is read (:func:`check_grid`), the grid's size included."""

from __future__ import annotations

import math
from typing import Any

from vitsweep.inputs import brief
from vitsweep.sweep.space import Param


def grid(space: tuple[Param, ...]) -> dict[str, list[Any]]:
    """The grid sampler's search space: every value of every param."""
    out: dict[str, list[Any]] = {}
    for p in space:
        if p.kind == "categorical":
            out[p.name] = list(p.choices)
        elif p.kind == "int":
            out[p.name] = list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        else:
            n = int(math.floor((p.high - p.low) / p.step + 1e-9))
            out[p.name] = [round(p.low + i * p.step, 12) for i in range(n + 1)]
    return out


# The grid sampler holds every point of its grid in memory (Optuna builds the whole product): more
# points than this are refused when the sweep file is read, long before a trial could reach them.
GRID_MAX_POINTS = 100_000


def grid_size(p: Param) -> int:
    """How many values ``p`` takes in :func:`grid`, counted without listing them."""
    if p.kind == "categorical":
        return len(p.choices)
    if p.kind == "int":
        return max(0, (int(p.high) - int(p.low)) // int(p.step or 1) + 1)
    n = (p.high - p.low) / p.step
    return int(math.floor(n + 1e-9)) + 1 if math.isfinite(n) else 10 ** 309  # (past any float: too many)


def check_grid(space: tuple[Param, ...], errors: list[str]) -> None:
    """What the grid sampler cannot search: floats without a step, conditions, and a grid too
    large to hold (more than :data:`GRID_MAX_POINTS` points), counted before any value is listed."""
    sizes: dict[str, int] = {}
    for p in space:
        if p.kind == "float" and p.step is None:
            errors.append(f"space.{brief(p.name, plain=True)}: the grid sampler needs a step (or choices) for floats")
        elif p.kind == "categorical" or (p.low is not None and p.high is not None and p.low <= p.high):
            sizes[p.name] = grid_size(p)  # (a bad low, high or step is reported where it is parsed)
        if p.when:
            errors.append(f"space.{brief(p.name, plain=True)}.when: the grid sampler does not support conditional params")
    points = math.prod(sizes.values()) if sizes else 0
    if points > GRID_MAX_POINTS:
        counts = " x ".join(f"{brief(name, plain=True)} {n:,}" for name, n in sizes.items())
        biggest = max(sizes, key=sizes.__getitem__)
        shown = f"{points:,}" if points < 10 ** 15 else f"about 10^{len(str(points)) - 1}"
        errors.append(f"sampler.name = grid: the space has {shown} grid points ({brief(counts, plain=True)}), "
                      f"more than the {GRID_MAX_POINTS:,} a grid can hold; give {brief(biggest, plain=True)} a larger "
                      f"step or fewer values, or use sampler.name: tpe or random, which sample the ranges")
