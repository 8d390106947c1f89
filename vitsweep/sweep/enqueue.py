"""``enqueue:`` in a sweep file: points of the search space a new study trains first (Optuna's
``enqueue_trial``), checked here like the space itself; ``study.set_up`` queues them once."""

from __future__ import annotations

from typing import Any

from vitsweep.inputs import brief
from vitsweep.schema import unknown_key
from vitsweep.sweep.space import Param, active, distribution_of


def parse_enqueue(raw: Any, space: tuple[Param, ...], errors: list[str]) -> tuple[dict[str, Any], ...]:
    """The sweep file's ``enqueue:`` list: points of the space the study tries first (Optuna's
    ``enqueue_trial``), e.g. the hand recipe the sweep should beat. Each is a mapping of param name
    -> value that sets every param it makes active (one exact config) and nothing else, each value
    inside its param's range or choices; every problem is collected in ``errors``."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(f"enqueue: expected a list of mappings (param name -> value), got {type(raw).__name__}")
        return ()
    by_name = {p.name: p for p in space}
    points: list[dict[str, Any]] = []
    for i, point in enumerate(raw):
        where = f"enqueue[{i}]"
        if not isinstance(point, dict) or not point:
            errors.append(f"{where}: expected a mapping of param name -> value, e.g. {{lr: 0.002}}")
            continue
        n0 = len(errors)
        for name in point:
            if name not in by_name:
                errors.append(unknown_key(f"{where}.{name}", [f"{where}.{p.name}" for p in space])
                              + " (enqueue names the space's params)")
        chosen: dict[str, Any] = {}
        for p in space:  # declaration order: a when-condition's param comes first
            if not active(p, chosen):
                if p.name in point:
                    cond = ", ".join(f"{n} in {list(v)}" for n, v in p.when)
                    errors.append(f"{where}.{p.name}: not sampled with these values (only when {cond}); remove it")
                continue
            if p.name not in point:
                errors.append(f"{where}: missing {p.name} (an enqueued point sets every param it samples)")
                continue
            value = point[p.name]
            dist = distribution_of(p)
            try:
                ok = dist._contains(dist.to_internal_repr(value))
            except (ValueError, TypeError):
                ok = False
            if not ok:
                domain = (f"one of {list(p.choices)}" if p.kind == "categorical" else
                          f"a number in [{p.low}, {p.high}]" + (f" on steps of {p.step} from {p.low}" if p.step else ""))
                errors.append(f"{where}.{p.name} = {brief(value)}: must be {domain}")
                continue
            chosen[p.name] = value
        if len(errors) == n0:
            points.append(chosen)
    return tuple(points)
