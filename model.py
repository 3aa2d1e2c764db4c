"""The models: the notebook's CvT (the default), the study's CvT variants and CNN, and two
baselines the study planned (a plain ViT and ResNet-18), behind one registry.

    python model.py --list                          # every model: parameters, GFLOPs, token grids
    python model.py --model cvt-original            # one model's modules, settings and cost
    python model.py --model vit --depth 6           # ... with settings changed, as train.py takes them

Each model has a config dataclass with its defaults; `build_model(name, num_classes, **settings)`
makes one. The study's models (../shared/reference/STUDY_MODELS.md) have its exact parameter
names and shapes, so the study's state_dicts load with strict=True and give the same outputs.
Attention runs through F.scaled_dot_product_attention and stochastic depth is torchvision's.
torchvision is imported only by the models that use it: importing it costs ~1.6 s, 40% of
every script's start-up on a 2-core CPU.
"""
import copy
import functools
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from constants import IMAGE_SIZE  # the CNN's classifier and the ViT's position embeddings depend on it


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


@dataclass
class CNNConfig(ModelConfig):
    """cnn: the study's TinyImageNetCNN."""

    channels: tuple = (64, 128, 256, 512)  # one block (two convs and a 2x2 max-pool) per value
    hidden_dim: int = 1024
    dropout: float = 0.5


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


@dataclass
class ResNetConfig(ModelConfig):
    """resnet18: torchvision's ResNet-18 with a 64x64 stem. Its widths are torchvision's."""

    STAGES = 4
    depth: tuple = (2, 2, 2, 2)  # BasicBlocks per stage


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


# ---------------------------------------------------------------- cvt-simplified: the notebook's model


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




# ---------------------------------------------------------------- the study's CvT variants


def to_tokens(x):
    return rearrange(x, "b c h w -> b (h w) c")


def to_map(x, grid):
    return rearrange(x, "b (h w) c -> b c h w", h=grid[0], w=grid[1])


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


# ---------------------------------------------------------------- the study's CNN


class ConvBlock(nn.Module):
    """[conv3x3 -> BatchNorm -> ReLU] x 2, then a 2x2 max-pool (keys block.0, .1, .3, .4)."""

    def __init__(self, in_channels, channels):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

    def forward(self, x):
        return self.block(x)


class TinyImageNetCNN(nn.Module):
    """cnn: the study's TinyImageNetCNN, conv blocks of 64/128/256/512 channels, then a
    two-layer classifier on the flattened 4x4 map."""

    def __init__(self, config):
        super().__init__()
        self.config = c = config
        widths = (c.in_channels, *c.channels)
        self.features = nn.Sequential(*[ConvBlock(a, b) for a, b in zip(widths, widths[1:])])
        side = IMAGE_SIZE >> len(c.channels)
        if side < 1:
            raise ValueError(f"{len(c.channels)} blocks halve a {IMAGE_SIZE}x{IMAGE_SIZE} image to nothing")
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c.channels[-1] * side * side, c.hidden_dim), nn.ReLU(inplace=True),
            Dropout(c.dropout), nn.Linear(c.hidden_dim, c.num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))

    def token_grids(self):
        return [(IMAGE_SIZE >> i, IMAGE_SIZE >> i) for i in range(1, len(self.config.channels) + 1)]


# ---------------------------------------------------------------- baselines: ViT and ResNet-18


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
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        x = self.dropout(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))

    def token_grids(self):
        side = IMAGE_SIZE // self.config.patch_size
        return [(side, side)]  # plus the class token


def resnet18(config):
    """resnet18: torchvision's ResNet-18 (its BasicBlocks, keys and initialisation) with the usual
    stem for 64x64 images: a 3x3 stride-1 first conv and no max-pool (as for CIFAR)."""
    return resnet18_class()(config)


@functools.cache
def resnet18_class():
    """The class, made on first use so that only this model imports torchvision."""
    import torchvision

    class ResNet18(torchvision.models.ResNet):
        def __init__(self, config):
            super().__init__(torchvision.models.resnet.BasicBlock, list(config.depth), num_classes=config.num_classes)
            self.config = config
            self.conv1 = nn.Conv2d(config.in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's
            self.maxpool = nn.Identity()

        def token_grids(self):
            return [(IMAGE_SIZE >> i, IMAGE_SIZE >> i) for i in range(4)]

    return ResNet18


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Entry:
    model: object  # an nn.Module class, or a function making one, taking the config
    config: type  # its config dataclass
    about: str
    defaults: dict = field(default_factory=dict)  # what makes this entry of a shared config class


MODELS = {
    "cvt-simplified": Entry(CvTSimplifiedEmbedding, CvTConfig, "the notebook's CvT: conv 7/4 embedding, 2 blocks at width 64"),
    "cvt-conv-embed": Entry(CvTConvEmbedding, ConvEmbedCvTConfig, "study: conv embedding (k5 s2), 13 blocks at width 192"),
    "cvt-enhanced-conv-embed": Entry(CvTConvEmbedding, ConvEmbedCvTConfig, "study: as cvt-conv-embed with a two-conv embedding",
                                     {"enhanced_embedding": True}),
    "cvt-recurrent": Entry(CvTStaged, StagedCvTConfig, "study: 3 stages (64/192/384), each with a two-conv embedding"),
    "cvt-original": Entry(CvTStaged, StagedCvTConfig, "study: 3 stages with one-conv embeddings and conv q/k/v projections",
                          {"enhanced_embedding": False, "conv_projection": True}),
    "cnn": Entry(TinyImageNetCNN, CNNConfig, "study: 4 VGG-style conv blocks (64-512 channels), 2-layer classifier"),
    "vit": Entry(ViT, ViTConfig, "baseline: plain ViT, patch 8, width 192, 9 blocks, 12 heads, class token"),
    "resnet18": Entry(resnet18, ResNetConfig, "baseline: torchvision ResNet-18, 3x3 stride-1 stem, no max-pool"),
}
DEFAULT_MODEL = "cvt-simplified"
# Every setting any model has, each a flag of train.py and model.py (--embed-dim, --depth, ...).
SETTINGS = sorted({f.name for entry in MODELS.values() for f in fields(entry.config)} - {"num_classes", "in_channels"})


def settings_of(name):
    return [f.name for f in fields(MODELS[name].config) if f.name not in ("num_classes", "in_channels")]


def parse_setting(config_class, name, text):
    """A command-line value for a config field: '1,2,10' for per-stage settings, true/false, numbers."""
    kind = {f.name: f.type for f in fields(config_class)}[name]
    try:
        if kind is bool:
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.lower()]
        if kind is tuple:
            return tuple(int(part) for part in text.split(","))
        return kind(text)
    except (KeyError, ValueError):
        expected = {bool: "true or false", tuple: "integers separated by commas", int: "an integer"}.get(kind, "a number")
        raise ValueError(f"--{name.replace('_', '-')} takes {expected}, got {text!r}") from None


def check_ranges(config):
    for name, value in asdict(config).items():
        values = value if isinstance(value, tuple) else (value,)
        if name in ("dropout", "drop_path"):
            ok, need = all(0 <= v < 1 for v in values), "in [0, 1)"
        elif name == "padding":
            ok, need = all(v >= 0 for v in values), "at least 0"
        elif isinstance(value, bool):
            continue
        else:
            ok, need = all(v > 0 for v in values), "positive"
        if not ok:
            raise ValueError(f"--{name.replace('_', '-')} must be {need}, got {value}")


def make_config(name, num_classes, **settings):
    """The config of model `name` with its defaults, changed by settings (values, or strings as
    given on the command line). ValueError names a setting the model does not have or a bad value."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the models: {', '.join(MODELS)}")
    entry = MODELS[name]
    unknown = sorted(set(settings) - set(settings_of(name)))
    if unknown:
        flags = lambda names: ", ".join(f"--{n.replace('_', '-')}" for n in names)  # noqa: E731
        raise ValueError(f"{name} has no setting {flags(unknown)}; its settings: {flags(settings_of(name))}")
    values = {key: parse_setting(entry.config, key, value) if isinstance(value, str) else value for key, value in settings.items()}
    config = entry.config(num_classes=num_classes, **{**entry.defaults, **values})
    check_ranges(config)
    return config


def changed_settings(name, values):
    """{setting: value} of the settings in values (a saved config) that differ from model name's
    defaults; values may come from JSON (lists for tuples)."""
    defaults = asdict(make_config(name, values.get("num_classes", 200)))
    plain = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    return {key: value for key, value in plain.items() if key in settings_of(name) and value != defaults[key]}


def format_setting(value):
    """A setting as given on the command line: '1,2,10', '0.1', 'true'."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value).lower()


def describe_settings(settings):
    """'depth 1,1,1, drop-path 0' for {"depth": (1, 1, 1), "drop_path": 0.0}."""
    return ", ".join(f"{key.replace('_', '-')} {format_setting(value)}" for key, value in settings.items())


def build_model(name, num_classes=None, config=None, **settings):
    """Model `name` with its default config changed by settings, or with the config given."""
    config = config if config is not None else make_config(name, num_classes, **settings)
    model = MODELS[name].model(config)
    model.model_name = name  # what checkpoints record with the config
    return model



# ---------------------------------------------------------------- costs and the command line


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


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model, backward=False):
    """Matmul/conv FLOPs for one 64x64 image, counted by torch's FlopCounterMode (forward in
    eval mode; with backward, forward and backward in training mode). Counted on a copy on the
    meta device: no time, and attention is counted (the CPU's fused SDPA kernel is not)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).to("meta").train(backward)
    x = torch.randn(1, model.config.in_channels, IMAGE_SIZE, IMAGE_SIZE, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


def describe_grids(model):
    """'16x16' or '32x32, 16x16, 16x16': the token (or feature map) grid of each stage."""
    return ", ".join(f"{h}x{w}" for h, w in model.token_grids())


def cost_row(name, num_classes=200, **settings):
    """{name, parameters, gflops, grids} of a model, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = build_model(name, num_classes, **settings)
    return {"name": name, "parameters": count_parameters(model), "gflops": flops_per_image(model) / 1e9,
            "grids": describe_grids(model)}


def print_list(num_classes):
    rows = [cost_row(name, num_classes) for name in MODELS]
    print(f"{'model':<24} {'parameters':>12} {'GFLOPs':>7}  {'token grid per stage':<26} about")
    for row in rows:
        print(f"{row['name']:<24} {row['parameters']:>12,} {row['gflops']:>7.3f}  {row['grids']:<26} {MODELS[row['name']].about}")
    print(f"GFLOPs: forward, one {IMAGE_SIZE}x{IMAGE_SIZE} image, counted by torch.utils.flop_counter "
          f"(a multiply-add is 2 FLOPs); {num_classes} classes")


def add_setting_flags(parser):
    """One flag per model setting (--embed-dim, --depth, ...): the value is checked against the
    chosen model's config; per-stage settings take one value or one per stage (1,2,10)."""
    group = parser.add_argument_group(
        "model settings (defaults: the chosen model's, see `python model.py --model NAME`; a flag the model "
        "lacks is refused)")
    for name in SETTINGS:
        group.add_argument(f"--{name.replace('_', '-')}", metavar="VALUE", help=SETTING_HELP.get(name))
    return group


SETTING_HELP = {
    "embed_dim": "token width (per stage for staged models)",
    "depth": "transformer blocks (per stage: 1,2,10), or ResNet blocks per stage",
    "num_heads": "attention heads (per stage for staged models)",
    "mlp_ratio": "MLP hidden width / token width",
    "dropout": "dropout rate",
    "drop_path": "stochastic depth rate",
    "patch_size": "embedding kernel (ViT: patch side)",
    "stride": "embedding stride",
    "padding": "embedding padding (cvt-simplified)",
    "channels": "CNN channels per block (64,128,256,512)",
    "hidden_dim": "CNN classifier hidden width",
    "enhanced_embedding": "true: two convs sharing one LayerNorm; false: one conv",
    "conv_projection": "true: depthwise conv -> BatchNorm -> pointwise before q, k, v (cvt-original)",
}


def given_settings(args):
    """{setting: text} of the setting flags given on the command line."""
    return {name: getattr(args, name) for name in SETTINGS if getattr(args, name) is not None}


def main(argv=None):
    from cli import ArgumentParser

    parser = ArgumentParser(description="Print the models' sizes and costs.")
    parser.add_argument("--list", action="store_true", help="one row per model: parameters, GFLOPs, token grids")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=tuple(MODELS), help="the model to show")
    parser.add_argument("--num-classes", type=int, default=200, help="200 for Tiny ImageNet")
    add_setting_flags(parser)
    args = parser.parse_args(argv)
    if args.list:
        return print_list(args.num_classes)
    try:
        model = build_model(args.model, args.num_classes, **given_settings(args))
    except ValueError as error:
        parser.error(str(error))
    print(model)
    changed = describe_settings(changed_settings(args.model, asdict(model.config)))
    print(f"{args.model} ({changed}); at its defaults: {MODELS[args.model].about}" if changed
          else f"{args.model}: {MODELS[args.model].about}")
    print("settings: " + " ".join(f"--{key.replace('_', '-')} {format_setting(getattr(model.config, key))}"
                                  for key in settings_of(args.model)))
    print(f"parameters: {count_parameters(model):,}")
    print(f"token grid per stage: {describe_grids(model)}")
    grouped = any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())
    print(f"FLOPs per {IMAGE_SIZE}x{IMAGE_SIZE} image: {flops_per_image(model) / 1e9:.3f} G forward, "
          f"{flops_per_image(model, backward=True) / 1e9:.3f} G forward + backward"
          + (" (too high: torch's flop counter counts the backward of depthwise convs as dense)" if grouped else ""))


if __name__ == "__main__":
    main()
