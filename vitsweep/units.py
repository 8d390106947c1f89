"""How vitsweep shows a metric, everywhere (terminal, tables, report, CSV files): accuracies in percent.

Stored values stay what Optuna and the trainer compute (an accuracy is a fraction in [0, 1]); what a
person reads says percent: ``fmt_metric`` for text, :func:`shown` and :func:`axis_title` for plots,
and a ``_pct`` column (``test_acc_mean_pct``) in the CSV files, as in MLflow (``best_val_acc_pct``).
"""

from __future__ import annotations

from vitsweep.tracking.tags import PERCENT_SUFFIX


def is_percent(metric: str) -> bool:
    """Whether ``metric`` is an accuracy, shown in percent (``val_acc``, ``test_acc_mean``...)."""
    return "acc" in metric


def fmt_metric(value: float | None, metric: str) -> str:
    """A metric as vitsweep shows it everywhere: accuracies (``*acc*``, in [0, 1]) in percent with
    two decimals, anything else with four significant decimals; ``-`` when there is none."""
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.2%}" if is_percent(metric) else f"{value:.4f}"


def shown(value: float, metric: str) -> float:
    """The number a plot or a CSV file shows for ``value``: an accuracy in percent (0.2213 -> 22.13)."""
    return 100.0 * value if is_percent(metric) else value


def axis_title(metric: str) -> str:
    """A plot axis or a table column that holds :func:`shown` values: ``val_acc (%)``, ``val_loss``."""
    return f"{metric} (%)" if is_percent(metric) else metric


def pct_column(name: str) -> str:
    """A CSV column's name for :func:`shown` values: ``test_acc_mean`` -> ``test_acc_mean_pct``."""
    return name + PERCENT_SUFFIX if is_percent(name) else name
