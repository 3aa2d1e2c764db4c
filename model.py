"""The notebook's CvT with a convolutional token embedding (`CvTSimplifiedEmbedding`).

A 7x7/4 convolution turns a 64x64 image into 16x16 = 256 tokens of 64 channels, two
pre-norm transformer blocks (1-head attention, MLP ratio 4, GELU, dropout 0.1) mix them,
and the mean token goes through a linear head. Parameter names and shapes are the
notebook's, so its state_dict loads with strict=True; attention runs through
F.scaled_dot_product_attention instead of nn.MultiheadAttention's slow path.

    python model.py                   # parameters and FLOPs per image (200 classes)
"""
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


@dataclass
class CvTConfig:
    num_classes: int  # from the data (200 for Tiny ImageNet), never a constant
    in_channels: int = 3
    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 1
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    patch_size: int = 7
    stride: int = 4
    padding: int = 3


@torch.library.custom_op("cvt::dropout_mask", mutates_args=())
def dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout's mask for a CPU tensor `like`: 0 with probability p, else 1 / (1 - p), in like's
    dtype (as F.dropout builds it).

    Why: F.dropout draws one float per element with bernoulli_, a third of the CPU training
    step. Here each element gets 16 random bits, four per 64-bit word of numpy's PCG64 (seeded
    from torch's global generator, so torch.manual_seed and saved RNG states still decide every
    mask), about six times faster. p is rounded to a multiple of 2^-16 (0.1 -> 0.100006) and the
    scale uses the rounded value, so the expectation is exact. A custom op, so torch.compile
    calls it as it is instead of tracing its random draw.
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
    """F.dropout, with the fast mask above on CPU (CUDA's fused F.dropout is already fast)."""
    if not training or p == 0:
        return x
    if x.is_cuda:
        return F.dropout(x, p, training=True)
    return x * dropout_mask(x.detach(), p)  # the mask carries no gradient


class Dropout(nn.Dropout):
    """nn.Dropout (same place in the notebook's Sequential, no parameters) using dropout()."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


class EmbeddingBlock(nn.Module):
    """Convolution to embed_dim channels, then one token per output pixel, layer-normed."""

    def __init__(self, config):
        super().__init__()
        self.proj = nn.Conv2d(
            config.in_channels, config.embed_dim,
            kernel_size=config.patch_size, stride=config.stride, padding=config.padding,
        )
        self.norm = nn.LayerNorm(config.embed_dim)

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
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention._reset_parameters
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x):
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.num_heads) for t in (q, k, v))
        if self.training and self.dropout > 0 and not x.is_cuda:
            # CPU training: SDPA would take its math path with a slow dropout; the same math here
            # uses the fast mask. Dropout acts on the attention weights, as in nn.MultiheadAttention.
            weights = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)
            x = dropout(weights, self.dropout, training=True) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(rearrange(x, "b h n d -> b n (h d)"))


class TransformerBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden_dim = int(config.embed_dim * config.mlp_ratio)
        self.norm1 = nn.LayerNorm(config.embed_dim)
        self.attn = SelfAttention(config.embed_dim, config.num_heads, config.dropout)
        self.norm2 = nn.LayerNorm(config.embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.embed_dim, hidden_dim),
            nn.GELU(),
            Dropout(config.dropout),
            nn.Linear(hidden_dim, config.embed_dim),
            Dropout(config.dropout),
        )

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CvTSimplifiedEmbedding(nn.Module):
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


def config_from_state_dict(state_dict):
    """Rebuild the config of a checkpoint that carries none (the notebook's Lightning run)."""
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


def flops_per_image(model, image_size=64, backward=False):
    """Matmul/conv FLOPs for one image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, model.config.in_channels, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


def main(argv=None):
    from cli import ArgumentParser

    parser = ArgumentParser(description="Print the model's size and cost.")
    parser.add_argument("--num-classes", type=int, default=200, help="200 for Tiny ImageNet")
    args = parser.parse_args(argv)
    model = CvTSimplifiedEmbedding(CvTConfig(num_classes=args.num_classes))
    print(model)
    print(f"config: {asdict(model.config)}")
    print(f"parameters: {count_parameters(model):,}")
    print(f"FLOPs per 64x64 image: {flops_per_image(model) / 1e6:.1f} M forward, "
          f"{flops_per_image(model, backward=True) / 1e6:.1f} M forward + backward")


if __name__ == "__main__":
    main()
