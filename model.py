"""The registry of the models: the notebook's CvT (the default), the study's CvT variants and CNN,
and two baselines the study planned (a plain ViT and ResNet-18); their settings as train.py's
flags take them, and their costs. The architectures themselves live in models/ (one file per
family, shared blocks in models/blocks.py).

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
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn

from constants import IMAGE_SIZE
from models.cnn import CNNConfig, ConvNet, ConvNetConfig, ResNetConfig, TinyImageNetCNN, resnet18
from models.cvt import (  # noqa: F401 (CvTConfig, CvTSimplifiedEmbedding, config_from_state_dict: imported from here)
    ConvEmbedCvTConfig,
    CvTConfig,
    CvTConvEmbedding,
    CvTSimplifiedEmbedding,
    CvTStaged,
    StagedCvTConfig,
    config_from_state_dict,
)
from models.vit import ViT, ViTConfig


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
    "convnet": Entry(ConvNet, ConvNetConfig, "CPU hour: 3 conv-BN-GELU blocks (64/192/256), any image size"),
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


def has_batchnorm(model):
    """Whether the model normalises with batch statistics (each process's own under torchrun)."""
    return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules())


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
    "identity_init": "true: each conv after the first starts as the identity on its inputs (airbench's init)",
    "whiten_init": "true: the first conv starts as the PCA whitening of 3x3 patches of 1,000 training images (airbench's)",
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
