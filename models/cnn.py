"""The convolutional models: the study's TinyImageNetCNN (4 VGG-style blocks), torchvision's
ResNet-18 with a 3x3 stem for 64x64 images (torchvision imported only when one is built), and
convnet, a small conv-BatchNorm-GELU net that takes any image size (the CPU-hour candidate).
"""
import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from constants import IMAGE_SIZE
from models.blocks import Dropout, ModelConfig


@dataclass
class CNNConfig(ModelConfig):
    """cnn: the study's TinyImageNetCNN."""

    channels: tuple = (64, 128, 256, 512)  # one block (two convs and a 2x2 max-pool) per value
    hidden_dim: int = 1024
    dropout: float = 0.5


@dataclass
class ConvNetConfig(ModelConfig):
    """convnet: a small VGG-style net for the CPU hour (benchmarks/README.md, "The CPU hour")."""

    channels: tuple = (64, 192, 256)  # one block (two conv-BN-GELU and a 2x2 max-pool) per value
    identity_init: bool = False  # airbench's: every conv but the first starts as the identity on its inputs
    whiten_init: bool = False  # airbench's: the first conv starts as the whitening of the training images' patches


@dataclass
class ResNetConfig(ModelConfig):
    """resnet18: torchvision's ResNet-18 with a 64x64 stem. Its widths are torchvision's."""

    STAGES = 4
    depth: tuple = (2, 2, 2, 2)  # BasicBlocks per stage


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


class ConvNet(nn.Module):
    """convnet: blocks of [conv3x3 (no bias) -> BatchNorm -> GELU] x 2 and a 2x2 max-pool, then
    global average pooling and a linear head: no layer is sized for 64x64, so it trains at any
    side (--low-res) and is tested at 64. Measured on the 2-core CPU at 32 px: 507 train img/s,
    80% of the bf16 conv peak (benchmarks/hardware.py)."""

    def __init__(self, config):
        super().__init__()
        self.config = c = config
        layers, width = [], c.in_channels
        for channels in c.channels:
            for _ in range(2):
                layers += [nn.Conv2d(width, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.GELU()]
                width = channels
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, c.num_classes)
        if c.identity_init:
            # The first in_channels filters of each later conv pass its input through (nn.init.dirac_),
            # as airbench starts its convs: the net begins close to a shallow one.
            for conv in [m for m in self.features if isinstance(m, nn.Conv2d)][1:]:
                nn.init.dirac_(conv.weight[: conv.in_channels])

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))

    @torch.no_grad()
    def whiten_stem(self, images, eps=5e-4):
        """--whiten-init (airbench's, a data-dependent init of a new model): the first conv's
        filters become the principal directions of the images' 3x3 patches, strongest first, each
        scaled to unit variance on them, and their negatives (so GELU keeps both signs); filters
        beyond twice the patch size keep their random init. images: normalised training images
        at the side training starts at."""
        conv = self.features[0]
        moment, count = 0, 0
        for chunk in images.split(100):  # (all 1,000 images' patches at once: 1.7 GB at 64 px)
            patches = F.unfold(chunk.float(), conv.kernel_size).double()  # (images, C*kh*kw, positions)
            moment, count = moment + (patches @ patches.mT).sum(0), count + patches.shape[0] * patches.shape[2]
        eigenvalues, eigenvectors = torch.linalg.eigh(moment / count)  # ascending
        k = min(conv.out_channels // 2, len(eigenvalues))
        filters = eigenvectors.T.flip(0)[:k] / (eigenvalues.flip(0)[:k, None] + eps).sqrt()
        filters = filters.view(k, *conv.weight.shape[1:]).to(conv.weight)
        conv.weight[: 2 * k] = torch.cat([filters, -filters])

    def token_grids(self):
        return [(IMAGE_SIZE >> i, IMAGE_SIZE >> i) for i in range(1, len(self.config.channels) + 1)]
