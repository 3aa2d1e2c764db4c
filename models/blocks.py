"""What the models share: the config base class, the fast CPU dropout, LayerNorm that keeps fp32
under autocast, stochastic depth, and one attention module (SDPA inside, its weights on request
for explain.py). Not here: any one model (cvt.py, cnn.py, vit.py), the registry (model.py).
"""
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


def conv_size(size, kernel, stride, padding):
    """Output height (or width) of a convolution."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass
class ModelConfig:
    """What every config has. The class count comes from the data (200 for Tiny ImageNet).
    Per-stage settings (tuple fields) given one value are repeated for every stage: --depth 1
    means one block in each stage."""

    num_classes: int
    in_channels: int = 3
    STAGES = None  # (not a field) a fixed number of stages; None: the longest per-stage setting

    def __post_init__(self):
        names = per_stage_fields(type(self))
        for name in names:  # a number or a list (JSON) where a tuple is meant
            value = getattr(self, name)
            setattr(self, name, tuple(value) if isinstance(value, (list, tuple)) else (value,))
        count = self.STAGES or max((len(getattr(self, name)) for name in names), default=0)
        for name in names:
            value = getattr(self, name)
            if len(value) == 1:
                setattr(self, name, value * count)
            elif len(value) != count:
                raise ValueError(f"--{name.replace('_', '-')} has {len(value)} values for {count} stages: give one, "
                                 f"or one per stage")


def per_stage_fields(config_class):
    return [f.name for f in fields(config_class) if f.type is tuple]


@torch.library.custom_op("cvt::dropout_mask", mutates_args=())
def dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout's mask for a CPU tensor `like`: 0 with probability p, else 1 / (1 - p), in like's
    dtype (as F.dropout builds it).

    Why: F.dropout draws one float per element with bernoulli_, a third of the CPU training
    step. Here each element gets 16 random bits, four per 64-bit word of numpy's PCG64 (seeded
    from torch's global generator, so torch.manual_seed and saved RNG states still decide every
    mask), about six times faster. p is rounded to a multiple of 2^-16 (0.1 -> 0.100006) and the
    scale uses the rounded value, so in fp32 the expectation is exact. In bf16 the scale itself
    rounds (1 / 0.9 -> 1.109375, 0.16% low): a bias stock F.dropout has too, as it also builds
    its scaled mask in the input's dtype. A custom op, so torch.compile calls it as it is
    instead of tracing its random draw.
    """
    dropped = round(p * 65536)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    words = np.random.PCG64(seed).random_raw((like.numel() + 3) // 4)
    keep = torch.from_numpy(words.view(np.uint16)[: like.numel()] >= dropped).view(like.shape)
    scale = torch.tensor(65536 / (65536 - dropped), dtype=like.dtype)
    return torch.where(keep, scale, torch.zeros((), dtype=like.dtype))


@dropout_mask.register_fake
def _(like, p):
    return torch.empty_like(like)


def dropout(x, p, training):
    """F.dropout, with the fast mask above on CPU (CUDA's and MPS's own F.dropout run on the device)."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    return x * dropout_mask(x.detach(), p)  # the mask carries no gradient


class Dropout(nn.Dropout):
    """nn.Dropout (same place in the notebook's Sequential, no parameters) using dropout()."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


def stochastic_depth(p):
    """torchvision's StochasticDepth in "row" mode (each image drops the branch with probability
    p), or Identity at p = 0, which computes the same and leaves torchvision unimported."""
    if p == 0:
        return nn.Identity()
    from torchvision.ops import StochasticDepth

    return StochasticDepth(p, "row")


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and keys) computed in fp32 with an fp32 output under autocast.

    Why: CUDA autocast runs layer_norm in fp32, CPU autocast does not; in bf16 the norm's
    statistics and the residual stream it feeds lose precision (at initialisation, 14.6% relative
    gradient error against fp32 on the default model; 0.35% with this; `benchmarks/numerics.py`).
    Its fp32 output keeps the transformers' residual stream in fp32 too: x + branch(x) promotes
    bf16 to fp32. (The one place a module touches autocast: the norm's precision is part of the
    model's numerics, the same on every device.)
    """

    def forward(self, x):
        if x.device.type not in ("cpu", "cuda", "mps") or not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)  # fp32 already (also meta tensors, which flops_per_image uses)
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)


def split_heads(x, num_heads):
    """(batch, tokens, heads * d) -> (batch, heads, tokens, d): heads are contiguous channel groups."""
    return rearrange(x, "b t (h d) -> b h t d", h=num_heads)


def merge_heads(x):
    return rearrange(x, "b h t d -> b t (h d)")


def attention_weights(q, k):
    """softmax(q k^T / sqrt(d)) per head: (batch, heads, queries, keys)."""
    return torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)


class Attention(nn.Module):
    """softmax(q k^T / sqrt(d)) v per head, with dropout p on the attention weights in training.

    F.scaled_dot_product_attention, except on two paths that compute the same math explicitly:
    CPU training with dropout (there SDPA takes its math path with a slow dropout, so the fast
    mask is used instead), and keep_weights (set by explain.py), which stores the weights in
    `self.weights` because SDPA does not return them. No parameters: state_dicts are unchanged.
    """

    def __init__(self, p):
        super().__init__()
        self.p = p
        self.keep_weights = False
        self.weights = None

    def forward(self, q, k, v):
        if self.keep_weights or (self.training and self.p > 0 and q.device.type == "cpu"):
            weights = attention_weights(q, k)
            if self.keep_weights:
                self.weights = weights
            return dropout(weights, self.p, self.training) @ v
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0)


def to_tokens(x):
    return rearrange(x, "b c h w -> b (h w) c")


def to_map(x, grid):
    return rearrange(x, "b (h w) c -> b c h w", h=grid[0], w=grid[1])


class ConvProjection(nn.Module):
    """cvt-original's projection of the token map before q, k or v: depthwise 3x3 (stride 1,
    unlike Microsoft's CvT, which strides k and v) -> BatchNorm -> pointwise 1x1."""

    def __init__(self, dim):
        super().__init__()
        self.depthwise_conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.bn = nn.BatchNorm2d(dim)
        self.pointwise_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x, grid):
        return to_tokens(self.pointwise_conv(self.bn(self.depthwise_conv(to_map(x, grid)))))


class Block(nn.Module):
    """The study's pre-norm transformer block (also the ViT's): bias-free q/k/v projections,
    optionally after convolutional projections, SDPA attention, an MLP, and stochastic depth
    on both residual branches."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, dropout=0.0, drop_path=0.0, conv_projection=False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.conv_projection = num_heads, conv_projection
        self.norm1 = LayerNorm(dim)
        if conv_projection:
            self.proj_q_conv, self.proj_k_conv, self.proj_v_conv = (ConvProjection(dim) for _ in range(3))
        self.proj_q, self.proj_k, self.proj_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.attend = Attention(dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(dropout)
        self.norm2 = LayerNorm(dim)
        hidden_dim = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), Dropout(dropout), nn.Linear(hidden_dim, dim), Dropout(dropout))
        self.drop_path = stochastic_depth(drop_path)

    def forward(self, x, grid=None):
        """x: (batch, tokens, dim); grid: the tokens' (height, width), needed by conv projections."""
        h = self.norm1(x)
        q = k = v = h
        if self.conv_projection:
            q, k, v = self.proj_q_conv(h, grid), self.proj_k_conv(h, grid), self.proj_v_conv(h, grid)
        q, k, v = (split_heads(t, self.num_heads) for t in (self.proj_q(q), self.proj_k(k), self.proj_v(v)))
        attention = merge_heads(self.attend(q, k, v))
        x = x + self.drop_path(self.proj_drop(self.proj(attention)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
