"""A readable Vision Transformer (ViT) for small images.

Conv patch embedding -> + learned position embedding -> patch dropout (training only) -> [cls]
-> pre-norm blocks (fused qkv, F.scaled_dot_product_attention, stochastic depth) -> LayerNorm ->
linear head. Shapes: B batch, C channels, H/W image size, P patch, N = (H/P)*(W/P) tokens, D dim,
h heads.

Any image size that the patch size divides works: the position embedding is learned on the
config's grid and resampled (bicubic) to a smaller grid, which is how progressive resolution
trains early epochs on fewer tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.train.config import ModelConfig


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty(x.shape[0], *([1] * (x.ndim - 1)), device=x.device, dtype=x.dtype)
        return x * keep.bernoulli_(1.0 - self.p) / (1.0 - self.p)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v as two batched matmuls, the softmax in fp32 (as the fused
    kernels do). On a CPU in bf16 this is 3.5x faster (forward + backward) than PyTorch 2.14's
    fused CPU kernel at ViT sizes (65 tokens, head dim 64: 20 ms against 70 ms per 128 images
    and 3 heads, timed on its own; whole training steps in `benchmarks/train_throughput.py`); in
    fp32 the fused kernel is the faster one."""
    a = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, h, N, N)
    a = a.float().softmax(dim=-1).to(v.dtype)
    if dropout_p > 0:
        a = F.dropout(a, dropout_p)
    return a @ v  # (B, h, N, D/h)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, attn_dropout: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)  # fused q, k, v
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)  # (B, N, 3, h, D/h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, D/h)
        p = self.attn_dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
            x = explicit_attention(q, k, v, p)  # (B, h, N, D/h)
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, N, D/h)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj_drop(self.proj(x))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, attn_dropout: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, attn_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    def __init__(self, cfg: ModelConfig, image_size: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.cfg = cfg
        self.pool = cfg.pool
        self.patch_size = cfg.patch_size
        self.patch_dropout = cfg.patch_dropout
        self.grid = image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(in_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2 + 1, cfg.dim))  # [cls] first, then the grid
        self.pos_drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()  # deeper blocks drop more
        self.blocks = nn.Sequential(
            *[Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.attn_dropout, r) for r in rates]
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The head is NOT zero-initialised: a zero head passes no gradient to the blocks until it
        # has grown, which cost 3-4 points of validation accuracy after a short first epoch.

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        x = self.patch_embed(x)  # (B, D, H/P, W/P)
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2) + self.grid_pos_embed(grid)  # (B, N, D)
        if self.training and self.patch_dropout > 0:
            x = drop_patches(x, self.patch_dropout)  # (B, N_keep, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = self.pos_drop(torch.cat([cls, x], dim=1))  # (B, N+1, D)
        x = self.norm(self.blocks(x))  # (B, N+1, D)
        x = x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)  # (B, D)
        return self.head(x)  # (B, classes)

    def grid_pos_embed(self, grid: int) -> torch.Tensor:
        """The patch tokens' position embedding for a ``grid x grid`` image: (1, grid*grid, D)."""
        pos = self.pos_embed[:, 1:]  # (1, G*G, D)
        if grid == self.grid:
            return pos
        D = pos.shape[-1]
        pos = pos.reshape(1, self.grid, self.grid, D).permute(0, 3, 1, 2)  # (1, D, G, G)
        pos = F.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False)  # (1, D, g, g)
        return pos.permute(0, 2, 3, 1).reshape(1, grid * grid, D)

    def no_decay_names(self) -> set[str]:
        """Parameters kept out of weight decay: norms, biases, position embedding, cls token."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n in ("pos_embed", "cls_token")}


def drop_patches(x: torch.Tensor, p: float) -> torch.Tensor:
    """PatchDropout (Liu et al., WACV 2023): keep a random ``1 - p`` of each image's patch tokens.
    (B, N, D) -> (B, N_keep, D), N_keep = max(1, round(N * (1 - p)))."""
    B, N, D = x.shape
    keep = max(1, round(N * (1 - p)))
    idx = torch.rand(B, N, device=x.device).argsort(dim=1)[:, :keep]  # (B, N_keep)
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, D))


def kept_tokens(n_patches: int, patch_dropout: float) -> int:
    """Patch tokens a training image keeps under patch dropout (evaluation keeps all)."""
    return max(1, round(n_patches * (1 - patch_dropout))) if patch_dropout > 0 else n_patches


def forward_flops(cfg: ModelConfig, image_size: int, num_classes: int, tokens: int | None = None) -> float:
    """Multiply-adds x 2 of one image's forward pass (matmuls and attention; norms, softmax and
    activations are ignored, a few percent). ``tokens``: patch tokens entering the blocks (default
    all of them); a training step costs about 3x the forward."""
    n_patches = (image_size // cfg.patch_size) ** 2
    n = (n_patches if tokens is None else tokens) + 1  # + [cls]
    d, hidden = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
    embed = 2 * n_patches * (3 * cfg.patch_size**2) * d
    per_block = 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * n * d + 2 * 2 * n * d * hidden
    return float(embed + cfg.depth * per_block + 2 * d * num_classes)


def build_model(cfg: ModelConfig, image_size: int, num_classes: int) -> ViT:
    return ViT(cfg, image_size=image_size, num_classes=num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
