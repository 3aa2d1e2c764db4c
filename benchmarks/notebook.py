"""The notebook's code, verbatim where it matters: the baseline that tests and benchmarks
compare against. Not used by the training scripts.

Its model (with nn.MultiheadAttention, and TransformerBlock() built with its defaults),
its transforms, and its ImageFolder + random_split data pipeline.
"""
import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.data import DataLoader, random_split
from torchvision import datasets, transforms

NORMALIZE = transforms.Normalize(mean=[0.4802, 0.4481, 0.3975], std=[0.2302, 0.2265, 0.2262])
TRAIN_TRANSFORMS = transforms.Compose(
    [transforms.RandomHorizontalFlip(), transforms.RandomCrop(64, padding=4), transforms.ToTensor(), NORMALIZE]
)
VAL_TRANSFORMS = transforms.Compose([transforms.ToTensor(), NORMALIZE])


class EmbeddingBlock(nn.Module):
    def __init__(self, in_channels=3, embed_dim=64, patch_size=7, stride=4, padding=3, norm_layer=nn.LayerNorm):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=stride, padding=padding)
        self.norm = norm_layer(embed_dim)

    def forward(self, x):
        x = self.proj(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        x = self.norm(x)
        return x


class TransformerBlock(nn.Module):
    def __init__(self, embed_dim=64, num_heads=1, mlp_ratio=4.0, drop=0.1, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=drop, batch_first=True)
        self.norm2 = norm_layer(embed_dim)
        hidden_dim = int(embed_dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden_dim, embed_dim), nn.Dropout(drop)
        )

    def forward(self, x):
        x = x + self.attn(self.norm1(x), self.norm1(x), self.norm1(x))[0]
        x = x + self.mlp(self.norm2(x))
        return x


class CvTSimplifiedEmbedding(nn.Module):
    def __init__(self, in_channels=3, num_classes=200, embed_dim=64, depth=2):
        super().__init__()
        self.num_classes = num_classes
        self.embedding = EmbeddingBlock(in_channels=in_channels, embed_dim=embed_dim, stride=4, padding=3, norm_layer=nn.LayerNorm)
        self.transformer_blocks = nn.Sequential(*[TransformerBlock() for _ in range(depth)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(1), nn.Linear(embed_dim, num_classes))

    def forward(self, x):
        x = self.embedding(x)
        x = self.transformer_blocks(x)
        x = x.permute(0, 2, 1)
        x = self.head(x)
        return x


def notebook_datasets(dataset_root, val_split=0.2, seed=42):
    """(train, val, test) datasets exactly as get_tiny_imagenet_loaders builds them."""
    train = datasets.ImageFolder(f"{dataset_root}/train", transform=TRAIN_TRANSFORMS)
    full_val = datasets.ImageFolder(f"{dataset_root}/val_processed", transform=VAL_TRANSFORMS)
    val_size = int(val_split * len(full_val))
    generator = torch.Generator().manual_seed(seed)
    val, test = random_split(full_val, [val_size, len(full_val) - val_size], generator=generator)
    return train, val, test


def notebook_train_loader(dataset_root, batch_size=64, workers=2):
    train, _, _ = notebook_datasets(dataset_root)
    # pin_memory only helps with a GPU (the notebook sets it unconditionally).
    return DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
