"""The convolutional models: the study's TinyImageNetCNN (4 VGG-style blocks), torchvision's
ResNet-18 with a 3x3 stem for 64x64 images (torchvision imported only when one is built), and
convnet, a small conv-BatchNorm-GELU net that takes any image size (the CPU-hour candidate).
"""
import functools
from dataclasses import dataclass

import torch.nn as nn

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

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))

    def token_grids(self):
        return [(IMAGE_SIZE >> i, IMAGE_SIZE >> i) for i in range(1, len(self.config.channels) + 1)]
