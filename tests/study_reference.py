"""The study's model classes, written from ../shared/reference/STUDY_MODELS.md in the study's
own style (explicit einsum attention, a hand-written DropPath, einops everywhere), kept apart
from model.py: the tests load their state_dicts into the registry's models and compare outputs.
Sizes are the study's, fixed as in its code; only the class count varies."""
import torch
import torch.nn as nn
from einops import rearrange


class DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = 1 - self.p
        return x * x.new_empty(x.shape[0], 1, 1).bernoulli_(keep) / keep


class SepConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.depthwise_conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.bn = nn.BatchNorm2d(dim)
        self.pointwise_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        return self.pointwise_conv(self.bn(self.depthwise_conv(x)))


class TransformerBlock(nn.Module):
    def __init__(self, dim, heads, conv_proj=False):
        super().__init__()
        self.heads, self.conv_proj = heads, conv_proj
        self.norm1 = nn.LayerNorm(dim)
        if conv_proj:
            self.proj_q_conv, self.proj_k_conv, self.proj_v_conv = SepConv(dim), SepConv(dim), SepConv(dim)
        self.proj_q = nn.Linear(dim, dim, bias=False)
        self.proj_k = nn.Linear(dim, dim, bias=False)
        self.proj_v = nn.Linear(dim, dim, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(4 * dim, dim), nn.Dropout(0.0))
        self.drop_path = DropPath(0.1)

    def forward(self, x, h, w):
        shortcut = x
        x = self.norm1(x)
        q = k = v = x
        if self.conv_proj:
            as_map = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
            q, k, v = (rearrange(conv(as_map), "b c h w -> b (h w) c")
                       for conv in (self.proj_q_conv, self.proj_k_conv, self.proj_v_conv))
        q = rearrange(self.proj_q(q), "b t (h d) -> b h t d", h=self.heads)
        k = rearrange(self.proj_k(k), "b t (h d) -> b h t d", h=self.heads)
        v = rearrange(self.proj_v(v), "b t (h d) -> b h t d", h=self.heads)
        scale = (x.shape[-1] // self.heads) ** -0.5
        attn = self.attn_drop((torch.einsum("bhld,bhtd->bhlt", q, k) * scale).softmax(dim=-1))
        out = rearrange(torch.einsum("bhlt,bhtd->bhld", attn, v), "b h t d -> b t (h d)")
        x = shortcut + self.drop_path(self.proj_drop(self.proj(out)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvEmbed(nn.Module):
    def __init__(self, in_ch, dim, k, s):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, k, s, k // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        _, _, h, w = x.shape
        return self.norm(rearrange(x, "b c h w -> b (h w) c")), h, w


class EnhancedConvEmbed(nn.Module):
    def __init__(self, in_ch, dim, k, s):
        super().__init__()
        self.proj1 = nn.Conv2d(in_ch, dim, k, s, k // 2)
        self.proj2 = nn.Conv2d(dim, dim, k, 1, k // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj1(x)
        _, _, h, w = x.shape
        x = self.norm(rearrange(x, "b c h w -> b (h w) c"))
        x = self.proj2(rearrange(x, "b (h w) c -> b c h w", h=h, w=w))
        return self.norm(rearrange(x, "b c h w -> b (h w) c")), h, w


class Stage(nn.Module):
    def __init__(self, depth, dim, heads, embed=None, conv_proj=False):
        super().__init__()
        if embed is not None:
            self.embed = embed
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, conv_proj) for _ in range(depth)])

    def forward(self, x, h=None, w=None):
        if hasattr(self, "embed"):
            x, h, w = self.embed(x)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x, h, w)
        return x, h, w


class CvTConvolutionalEmbedding(nn.Module):
    embedding = ConvEmbed

    def __init__(self, num_classes=200):
        super().__init__()
        self.conv_embed = self.embedding(3, 192, 5, 2)
        self.stage1, self.stage2, self.stage3 = Stage(1, 192, 3), Stage(2, 192, 3), Stage(10, 192, 3)
        self.norm = nn.LayerNorm(192)
        self.head = nn.Linear(192, num_classes)

    def forward(self, x):
        x, h, w = self.conv_embed(x)
        for stage in (self.stage1, self.stage2, self.stage3):
            x, h, w = stage(x, h, w)
        return self.head(self.norm(x).mean(1))


class CvTEnhancedConvolutionalEmbedding(CvTConvolutionalEmbedding):
    embedding = EnhancedConvEmbed


class CvTEnhancedRecurrentConvolutionalEmbedding(nn.Module):
    embedding, conv_proj = EnhancedConvEmbed, False

    def __init__(self, num_classes=200):
        super().__init__()
        self.stage1 = Stage(1, 64, 1, self.embedding(3, 64, 5, 2), self.conv_proj)
        self.stage2 = Stage(2, 192, 3, self.embedding(64, 192, 3, 2), self.conv_proj)
        self.stage3 = Stage(10, 384, 6, self.embedding(192, 384, 3, 1), self.conv_proj)
        self.norm = nn.LayerNorm(384)
        self.head = nn.Linear(384, num_classes)

    def forward(self, x):
        x, h, w = self.stage1(x)
        x, h, w = self.stage2(rearrange(x, "b (h w) c -> b c h w", h=h, w=w))
        x, h, w = self.stage3(rearrange(x, "b (h w) c -> b c h w", h=h, w=w))
        return self.head(self.norm(x).mean(1))


class CvTOriginal(CvTEnhancedRecurrentConvolutionalEmbedding):
    embedding, conv_proj = ConvEmbed, True


class CNNBlock(nn.Module):
    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(),
                                   nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(),
                                   nn.MaxPool2d(2, 2))

    def forward(self, x):
        return self.block(x)


class TinyImageNetCNN(nn.Module):
    def __init__(self, num_classes=200):
        super().__init__()
        self.features = nn.Sequential(CNNBlock(3, 64), CNNBlock(64, 128), CNNBlock(128, 256), CNNBlock(256, 512))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512 * 4 * 4, 1024), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(1024, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


STUDY_CLASSES = {
    "cvt-conv-embed": CvTConvolutionalEmbedding,
    "cvt-enhanced-conv-embed": CvTEnhancedConvolutionalEmbedding,
    "cvt-recurrent": CvTEnhancedRecurrentConvolutionalEmbedding,
    "cvt-original": CvTOriginal,
    "cnn": TinyImageNetCNN,
}
