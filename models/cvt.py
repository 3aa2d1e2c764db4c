"""The CvT family: the notebook's CvTSimplifiedEmbedding (the kit's default model) and the study's
variants (a convolutional embedding, its enhanced two-conv form, the recurrent three-stage model
and CvT-original with convolutional projections), with the study's exact parameter names.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from constants import IMAGE_SIZE
from models.blocks import (
    Attention,
    Block,
    Dropout,
    LayerNorm,
    ModelConfig,
    conv_size,
    merge_heads,
    split_heads,
    stochastic_depth,
    to_map,
    to_tokens,
)


@dataclass
class CvTConfig(ModelConfig):
    """cvt-simplified: the notebook's CvTSimplifiedEmbedding."""

    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 1
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    patch_size: int = 7
    stride: int = 4
    padding: int = 3
    drop_path: float = 0.0  # stochastic depth (not in the notebook)


@dataclass
class ConvEmbedCvTConfig(ModelConfig):
    """cvt-conv-embed and cvt-enhanced-conv-embed: one conv embedding, then stages of blocks
    at one width and one token grid."""

    embed_dim: int = 192
    depth: tuple = (1, 2, 10)  # blocks per stage
    num_heads: int = 3
    mlp_ratio: float = 4.0
    patch_size: int = 5  # the embedding's kernel (padding: kernel // 2)
    stride: int = 2
    dropout: float = 0.0  # after the embedding, on attention weights, projections and MLPs
    drop_path: float = 0.1  # stochastic depth of every residual branch
    enhanced_embedding: bool = False  # two convs sharing one LayerNorm


@dataclass
class StagedCvTConfig(ModelConfig):
    """cvt-recurrent and cvt-original: three stages, each with its own conv embedding."""

    embed_dim: tuple = (64, 192, 384)
    depth: tuple = (1, 2, 10)
    num_heads: tuple = (1, 3, 6)
    patch_size: tuple = (5, 3, 3)
    stride: tuple = (2, 2, 1)
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    drop_path: float = 0.1
    enhanced_embedding: bool = True
    conv_projection: bool = False  # depthwise conv -> BatchNorm -> pointwise conv before q, k and v


class EmbeddingBlock(nn.Module):
    """Convolution to embed_dim channels, then one token per output pixel, layer-normed."""

    def __init__(self, config):
        super().__init__()
        self.proj = nn.Conv2d(
            config.in_channels, config.embed_dim,
            kernel_size=config.patch_size, stride=config.stride, padding=config.padding,
        )
        self.norm = LayerNorm(config.embed_dim)

    def forward(self, x):
        x = rearrange(self.proj(x), "b c h w -> b (h w) c")
        return self.norm(x)


class SelfAttention(nn.Module):
    """nn.MultiheadAttention(batch_first=True) for query = key = value, with its parameter
    names (in_proj_weight, in_proj_bias, out_proj) and initialisation, computed by one
    fused projection and scaled_dot_product_attention."""

    def __init__(self, embed_dim, num_heads, dropout):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attend = Attention(dropout)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention._reset_parameters
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x):
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        x = self.attend(*(split_heads(t, self.num_heads) for t in (q, k, v)))
        return self.out_proj(merge_heads(x))


class TransformerBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden_dim = int(config.embed_dim * config.mlp_ratio)
        self.norm1 = LayerNorm(config.embed_dim)
        self.attn = SelfAttention(config.embed_dim, config.num_heads, config.dropout)
        self.norm2 = LayerNorm(config.embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.embed_dim, hidden_dim),
            nn.GELU(),
            Dropout(config.dropout),
            nn.Linear(hidden_dim, config.embed_dim),
            Dropout(config.dropout),
        )
        self.drop_path = stochastic_depth(config.drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CvTSimplifiedEmbedding(nn.Module):
    """cvt-simplified: the seed notebook's model."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embedding = EmbeddingBlock(config)
        self.transformer_blocks = nn.Sequential(*[TransformerBlock(config) for _ in range(config.depth)])
        # The notebook's head, kept as a Sequential so its keys (head.2.weight) match.
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(1), nn.Linear(config.embed_dim, config.num_classes))

    def forward(self, x):
        x = self.transformer_blocks(self.embedding(x))
        return self.head(x.transpose(1, 2))

    def token_grids(self):
        c = self.config
        return [(conv_size(IMAGE_SIZE, c.patch_size, c.stride, c.padding),) * 2]


class ConvEmbedding(nn.Module):
    """Conv2d(kernel, stride, padding kernel // 2) -> tokens -> LayerNorm. Returns (tokens, grid)."""

    def __init__(self, in_channels, dim, kernel, stride):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride, kernel // 2)
        self.norm = LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        return self.norm(to_tokens(x)), x.shape[-2:]


class EnhancedConvEmbedding(nn.Module):
    """The study's enhanced embedding: proj1 -> tokens -> norm -> map -> proj2 (stride 1) ->
    tokens -> the same norm again (one LayerNorm used twice, as in the study's code)."""

    def __init__(self, in_channels, dim, kernel, stride):
        super().__init__()
        self.proj1 = nn.Conv2d(in_channels, dim, kernel, stride, kernel // 2)
        self.proj2 = nn.Conv2d(dim, dim, kernel, 1, kernel // 2)
        self.norm = LayerNorm(dim)

    def forward(self, x):
        x = self.proj1(x)
        grid = x.shape[-2:]
        x = self.proj2(to_map(self.norm(to_tokens(x)), grid))
        return self.norm(to_tokens(x)), grid


class Stage(nn.Module):
    """An optional conv embedding (map -> tokens), a dropout, then blocks."""

    def __init__(self, embed, blocks, dropout):
        super().__init__()
        self.embed = embed
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x, grid=None):
        if self.embed is not None:
            x, grid = self.embed(x)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, grid)
        return x, grid


def embedding_class(enhanced):
    return EnhancedConvEmbedding if enhanced else ConvEmbedding


class CvTConvEmbedding(nn.Module):
    """cvt-conv-embed (CvTConvolutionalEmbedding) and, with the enhanced embedding,
    cvt-enhanced-conv-embed: one conv embedding (64x64 -> 32x32 tokens), then every stage's
    blocks at that width and grid; LayerNorm, mean over tokens, linear head."""

    def __init__(self, config):
        super().__init__()
        self.config = c = config
        self.conv_embed = embedding_class(c.enhanced_embedding)(c.in_channels, c.embed_dim, c.patch_size, c.stride)
        for index, depth in enumerate(c.depth, 1):
            blocks = [Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.dropout, c.drop_path) for _ in range(depth)]
            self.add_module(f"stage{index}", Stage(None, blocks, c.dropout))
        self.norm = LayerNorm(c.embed_dim)
        self.head = nn.Linear(c.embed_dim, c.num_classes)

    def forward(self, x):
        x, grid = self.conv_embed(x)
        for index in range(len(self.config.depth)):
            x, grid = getattr(self, f"stage{index + 1}")(x, grid)
        return self.head(self.norm(x).mean(dim=1))

    def token_grids(self):
        c = self.config
        size = conv_size(IMAGE_SIZE, c.patch_size, c.stride, c.patch_size // 2)
        return [(size, size)] * len(c.depth)


class CvTStaged(nn.Module):
    """cvt-recurrent (CvTEnhancedRecurrentConvolutionalEmbedding: enhanced embeddings) and
    cvt-original (CvTOriginal: single-conv embeddings, convolutional q/k/v projections): each
    stage embeds the previous stage's token map with its own convs, then runs its blocks."""

    def __init__(self, config):
        super().__init__()
        self.config = c = config
        in_channels = c.in_channels
        for index in range(len(c.depth)):
            dim = c.embed_dim[index]
            embed = embedding_class(c.enhanced_embedding)(in_channels, dim, c.patch_size[index], c.stride[index])
            blocks = [Block(dim, c.num_heads[index], c.mlp_ratio, c.dropout, c.drop_path, c.conv_projection)
                      for _ in range(c.depth[index])]
            self.add_module(f"stage{index + 1}", Stage(embed, blocks, c.dropout))
            in_channels = dim
        self.norm = LayerNorm(in_channels)
        self.head = nn.Linear(in_channels, c.num_classes)

    def forward(self, x):
        *first, last = (getattr(self, f"stage{index + 1}") for index in range(len(self.config.depth)))
        for stage in first:
            x = to_map(*stage(x))  # the next stage embeds the token map
        x, _ = last(x)
        return self.head(self.norm(x).mean(dim=1))

    def token_grids(self):
        c, size, grids = self.config, IMAGE_SIZE, []
        for kernel, stride in zip(c.patch_size, c.stride):
            size = conv_size(size, kernel, stride, kernel // 2)
            grids.append((size, size))
        return grids


def config_from_state_dict(state_dict):
    """The cvt-simplified config of a checkpoint that carries none (the notebook's Lightning
    run), from the shapes: width, depth, MLP ratio and kernel (heads cannot be read off)."""
    depth = 1 + max(int(key.split(".")[1]) for key in state_dict if key.startswith("transformer_blocks."))
    embed_dim, in_channels, patch_size, _ = state_dict["embedding.proj.weight"].shape
    hidden_dim = state_dict["transformer_blocks.0.mlp.0.weight"].shape[0]
    return CvTConfig(
        num_classes=state_dict["head.2.weight"].shape[0],
        in_channels=in_channels,
        embed_dim=embed_dim,
        depth=depth,
        mlp_ratio=hidden_dim / embed_dim,
        patch_size=patch_size,
    )
