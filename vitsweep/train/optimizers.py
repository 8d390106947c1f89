"""Optimizers by name: one table, one entry each (its default betas, in its own convention, and how
to build it). The config validates ``optimizer.name`` and the number of betas against this table
and the trainer builds from it, so adding an optimizer is one entry here and an unknown name can
never fall through to another optimizer.

torch and adan-pytorch are imported inside the builders: reading a config imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

    from vitsweep.train.config import OptimizerConfig
    from vitsweep.train.model import ViT

Groups = list[dict[str, Any]]


@dataclass(frozen=True)
class OptimizerKind:
    betas: tuple[float, ...]  # the defaults; their count is how many betas the optimizer takes
    build: Callable[[Groups, OptimizerConfig], torch.optim.Optimizer]
    about: str


def _torch(cls_name: str) -> Callable[[Groups, OptimizerConfig], torch.optim.Optimizer]:
    def build(groups: Groups, cfg: OptimizerConfig) -> torch.optim.Optimizer:
        import torch

        cls = getattr(torch.optim, cls_name)
        return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)

    return build


def _adan(groups: Groups, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    from adan_pytorch import Adan  # paper convention: betas (0.02, 0.08, 0.01), not 1 - beta

    return Adan(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


OPTIMIZERS: dict[str, OptimizerKind] = {
    # adan-pytorch's (the paper's) convention: m = (1 - b1) m + b1 g; sail-sg's code writes 1 - beta
    "adan": OptimizerKind((0.02, 0.08, 0.01), _adan, "Adan from adan-pytorch (betas in the paper's convention)"),
    "adamw": OptimizerKind((0.9, 0.999), _torch("AdamW"), "torch.optim.AdamW (decoupled weight decay)"),
    "adam": OptimizerKind((0.9, 0.999), _torch("Adam"), "torch.optim.Adam (weight decay as coupled L2)"),
}

# Default betas in each optimizer's own convention (see README, "Adan's betas").
DEFAULT_BETAS: dict[str, tuple[float, ...]] = {name: kind.betas for name, kind in OPTIMIZERS.items()}


def build_optimizer(model: ViT, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Decay only weight matrices: norms, biases, position embedding and cls token get none."""
    no_decay = model.no_decay_names()
    params = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in params if n not in no_decay], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if n in no_decay], "weight_decay": 0.0},
    ]
    return OPTIMIZERS[cfg.name].build(groups, cfg)
