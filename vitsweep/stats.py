"""Rank agreement between two orderings of the same configs (a sweep's values against their values
at full length): Spearman's rho and Kendall's tau-b, ties handled. Used by ``vitsweep promote``,
``vitsweep report`` and ``benchmarks/fidelity.py``."""

from __future__ import annotations

import itertools
import math


def ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (NaN with fewer than 2 points or a constant side)."""
    if len(x) < 2:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else float("nan")


def kendall(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either ranking handled; NaN when undefined)."""
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif (dx > 0) == (dy > 0):
            conc += 1
        else:
            disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else float("nan")


def order_verdict(sweep: list[float], final: list[float], maximize: bool = True) -> str:
    """One sentence on whether the sweep's order held at full length: ``the sweep's order held:
    Spearman 0.83 over 5 configs`` (rho >= 0.8), ``changed`` (below), or why it cannot be said."""
    if len(sweep) < 2:
        return f"the sweep's order: not measurable with {len(sweep)} config (promote --top 2 or more)"
    s = [v if maximize else -v for v in sweep]
    rho = spearman(s, final)
    if math.isnan(rho):
        return f"the sweep's order: not measurable (all values equal) over {len(sweep)} configs"
    word = "held" if rho >= 0.8 else "changed"
    return f"the sweep's order {word}: Spearman {rho:.2f} over {len(sweep)} configs"
