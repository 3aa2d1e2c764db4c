"""The plain ViT baseline: patch embedding, class token, learned positions, pre-norm blocks.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from constants import IMAGE_SIZE
from models.blocks import Block, Dropout, LayerNorm, ModelConfig, to_tokens


@dataclass
class ViTConfig(ModelConfig):
    """vit: a plain ViT at the size Lee et al. (2021) train on Tiny ImageNet (~2.8M parameters)."""

    patch_size: int = 8
    embed_dim: int = 192
    depth: int = 9
    num_heads: int = 12
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    drop_path: float = 0.1  # the deepest block's rate; it grows linearly from 0 (DeiT, timm)


class ViT(nn.Module):
    """A plain ViT: 8x8 patches embedded by a strided conv, a class token, learned position
    embeddings, pre-norm blocks (the study's Block: bias-free q/k/v), and the class token's
    LayerNorm'ed output through a linear head. timm's initialisation (truncated normal 0.02)."""

    def __init__(self, config):
        super().__init__()
        self.config = c = config
        tokens = (IMAGE_SIZE // c.patch_size) ** 2
        self.patch_embed = nn.Conv2d(c.in_channels, c.embed_dim, c.patch_size, c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, c.embed_dim))
        self.dropout = Dropout(c.dropout)
        rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]
        self.blocks = nn.ModuleList(Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.dropout, rate) for rate in rates)
        self.norm = LayerNorm(c.embed_dim)
        self.head = nn.Linear(c.embed_dim, c.num_classes)
        self.apply(self.initialise)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self):
        """Parameters left undecayed, as in timm and DeiT (timm's method of the same name)."""
        return {"cls_token", "pos_embed"}

    @staticmethod
    def initialise(module):
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x):
        x = to_tokens(self.patch_embed(x))
        # x.shape[0], not len(x): torch.export (export.py --onnx) keeps a shape dynamic, a len() it fixes
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.dropout(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))

    def token_grids(self):
        side = IMAGE_SIZE // self.config.patch_size
        return [(side, side)]  # plus the class token
