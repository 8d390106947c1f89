"""How vitsweep shows a metric, everywhere (terminal, tables, report): accuracies in percent."""

from __future__ import annotations


def fmt_metric(value: float | None, metric: str) -> str:
    """A metric as vitsweep shows it everywhere: accuracies (``*acc*``, in [0, 1]) in percent with
    two decimals, anything else with four significant decimals; ``-`` when there is none."""
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.2%}" if "acc" in metric else f"{value:.4f}"
