"""Where a model looks: Grad-CAM on its conv layers, its attention maps and attention rollout,
drawn over the images, and how much of each map falls on the object (--box-score).

    python explain.py runs/cvt/best.pt                          # the first 8 test images, every method
    python explain.py runs/cvt/best.pt --images 0 5 17 --method gradcam --layer embedding.proj
    python explain.py runs/cnn/best.pt --class goldfish --out explain/cnn
    python explain.py runs/cvt/best.pt --files photo.jpg photos/ # your own images
    python explain.py runs/cvt/best.pt --list-layers            # the layers Grad-CAM can use
    python explain.py runs/cvt/best.pt --box-score              # the share of each map on the object

Methods:
- gradcam (Selvaraju et al. 2017, by captum's LayerGradCam: `pip install captum`): on a conv
  layer, ReLU(sum over channels of (the mean over space of the target logit's gradient) x the
  activation), at the layer's resolution. Default layer: the last conv layer before the tokens
  (the last stage's embedding conv, the ViT's patch embedding); for the CNNs, the output of the
  last block (cnn) or stage (resnet18). Target: the predicted class (--target true: the label).
- attention: each transformer block's attention weights, per head, as the map of the token
  the model pools (the mean of the tokens for the CvTs, so the mean over the query rows; the
  class token's row for the ViT), over the image tokens.
- rollout (Abnar & Zuidema 2020): per block, the heads' mean plus the identity, rows
  renormalised, multiplied through the blocks, read as the pooled token's map. Rollout through
  a conv embedding that re-tokenises the map (the staged models' stages) is not defined, so
  those models get one rollout per stage; it also ignores cvt-original's conv projections.

Output in --out: gradcam.png, attention.png (heads averaged; attention-heads.png: every head of
the first image), rollout.png, and maps.pt with every raw map at its own resolution; with
--box-score, box_score.json. The drawn maps are upsampled bilinearly to 64x64 and scaled to
their own maximum.
"""
import sys

if __name__ == "__main__":  # before the imports below, which take a moment
    from cli import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from cli import ArgumentParser, exit_code_of, progress_bar, short_label
from figures import MATPLOTLIB_HINT, pyplot, save_figure
from constants import IMAGE_SIZE
from data import make_splits, normalize, split_boxes
from evaluation import checked_data, data_dir_of
from errors import DataError
from layout import ensure_dir, write_json
from model import MODELS, add_setting_flags, given_settings
from models.blocks import Attention
from models.cvt import Stage
from predict import class_names_for, short_name, load_any_image, own_image_files, read_images, report_unreadable
from runtime import resolve_device

METHODS = ("gradcam", "attention", "rollout")
TARGETS = {"pred": "predicted", "true": "true"}  # --target, as the pictures say it
OUTPUTS = ("gradcam.png", "attention.png", "rollout.png", "attention-heads.png", "maps.pt", "box_score.json")
CAPTUM_HINT = "Grad-CAM uses captum, which is not installed: `python -m pip install captum`"


# ---------------------------------------------------------------- layers


def map_shapes(model, device):
    """{module name: (channels, height, width)} of every module whose output is a feature map
    (larger than 1x1: a global pooling's output has nothing to show), in the order they run (one
    forward of a blank image)."""
    shapes, hooks = {}, []

    def record(name, output):
        if torch.is_tensor(output) and output.dim() == 4 and output.shape[-2] * output.shape[-1] > 1:
            shapes.setdefault(name, tuple(output.shape[1:]))

    for name, module in model.named_modules():
        if name:  # (a hook that returned a value would replace the module's output)
            hooks.append(module.register_forward_hook(lambda _m, _i, output, name=name: record(name, output)))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, model.config.in_channels, IMAGE_SIZE, IMAGE_SIZE, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def listed_layers(model, shapes):
    """The layers worth listing: every conv, every block of convs (the CNN's blocks, ResNet's
    blocks), and the model's own stages of feature maps (ResNet's layer1-4, the CNN's features)."""
    modules = dict(model.named_modules())

    def keep(name):
        module = modules[name]
        composite = any(True for _ in module.children())
        return isinstance(module, nn.Conv2d) or (composite and ("." not in name or not isinstance(module, nn.Sequential)))

    return [name for name in shapes if keep(name)]


def attention_modules(model):
    """[(name, Attention module)] in the order the blocks run."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, Attention)]


def block_name(attention_name):
    """'stage1.blocks.0' for 'stage1.blocks.0.attend', 'transformer_blocks.1' for '...1.attn.attend'."""
    return attention_name.removesuffix(".attend").removesuffix(".attn")


def default_layer(model, shapes):
    """The last conv layer before the tokens (convs inside attention blocks, such as
    cvt-original's projections, come after them); for a model without attention, its last
    top-level module with a feature map (the CNN's features, ResNet's layer4)."""
    blocks = [block_name(name) + "." for name, _ in attention_modules(model)]
    if blocks:
        convs = [name for name, module in model.named_modules()
                 if isinstance(module, nn.Conv2d) and not name.startswith(tuple(blocks))]
        return convs[-1]
    return [name for name in shapes if "." not in name][-1]


def print_layers(model, shapes, path):
    default = default_layer(model, shapes)
    modules = dict(model.named_modules())
    print(f"Grad-CAM layers of {path} ({model.model_name}): name, kind, output (channels x height x width)")
    for name in listed_layers(model, shapes):
        c, h, w = shapes[name]
        print(f"  {name:<40} {type(modules[name]).__name__:<18} {c}x{h}x{w}{'   (default)' if name == default else ''}")
    print("any other module with a feature-map output is accepted too (--layer NAME)")
    blocks = attention_modules(model)
    if blocks:
        print(f"attention: {len(blocks)} blocks ({', '.join(block_name(n) for n, _ in blocks)})")
    else:
        print("attention: none (no transformer blocks)")


# ---------------------------------------------------------------- the maps


def gradcam(model, x, targets, layers):
    """{layer: (B, h, w) Grad-CAM maps} by captum's LayerGradCam (ReLU of the channel sum of the
    space-averaged gradients times the activations), for the target class of each image."""
    try:
        from captum.attr import LayerGradCam
    except ImportError:
        raise DataError(CAPTUM_HINT) from None
    modules = dict(model.named_modules())
    model.eval()
    return {layer: LayerGradCam(model, modules[layer]).attribute(x, target=targets, relu_attributions=True)[:, 0].detach()
            for layer in layers}


def pooled_row(weights, class_token=False):
    """(B, heads, T, T) attention -> (B, heads, image tokens): the attention of the token the
    model pools, over the image tokens: the mean over the query rows, or for a model that pools
    a class token (the ViT's, token 0) that token's row, without its own column."""
    return weights[..., 0, 1:] if class_token else weights.mean(dim=-2)


def as_grid(row):
    """(..., side * side) -> (..., side, side)."""
    side = math.isqrt(row.shape[-1])
    return row.unflatten(-1, (side, side))


def rollout_step(weights, total=None):
    """One block of Abnar & Zuidema's rollout: its (B, heads, T, T) weights averaged over the
    heads, plus the identity, rows renormalised, multiplied onto the rollout so far from the
    left (None: the first block)."""
    a = weights.mean(dim=1) + torch.eye(weights.shape[-1], device=weights.device)
    a = a / a.sum(dim=-1, keepdim=True)
    return a if total is None else a @ total


def rollout(weights, class_token=False):
    """The rollout of [(B, heads, T, T)] weights of consecutive blocks, read as the pooled
    token's map (B, side, side)."""
    total = None
    for w in weights:
        total = rollout_step(w, total)
    return as_grid(pooled_row(total[:, None], class_token))[:, 0]


@torch.no_grad()
def run_keeping_attention(model, x, take):
    """One forward of the images x in which every block takes the explicit attention path and
    take(block name, (B, heads, T, T) weights) runs as soon as the block has run, so that no
    more than one block's weights are held at a time. Returns the logits."""
    modules = attention_modules(model)

    def hand_over(name, module):
        weights, module.weights = module.weights, None
        take(block_name(name), weights)

    hooks = [module.register_forward_hook(lambda m, _i, _o, name=name: hand_over(name, m)) for name, module in modules]
    for _, module in modules:
        module.keep_weights = True
    try:
        return model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
        for _, module in modules:
            module.keep_weights, module.weights = False, None


def attention_and_rollout(model, x, methods):
    """{"attention": {block: (B, heads, side, side)}, "rollout": {group: (B, side, side)}} of the
    methods asked for: each head's attention of the pooled token, and the rollout per group."""
    class_token = hasattr(model, "cls_token")
    group_of = {block: group for group, blocks in rollout_groups(model).items() for block in blocks}
    attention, totals = {}, {}

    def take(block, weights):
        if "attention" in methods:
            attention[block] = as_grid(pooled_row(weights, class_token))
        if "rollout" in methods:
            totals[group_of[block]] = rollout_step(weights, totals.get(group_of[block]))

    run_keeping_attention(model, x, take)
    maps = {"attention": attention} if "attention" in methods else {}
    if "rollout" in methods:
        maps["rollout"] = {group: as_grid(pooled_row(total[:, None], class_token))[:, 0] for group, total in totals.items()}
    return maps


def rollout_groups(model):
    """{group label: [block names]}: the blocks between two conv embeddings, where rollout is
    defined (the staged models' stages; one group for the other models)."""
    stages = [name for name, module in model.named_modules() if isinstance(module, Stage) and module.embed is not None]
    groups = {}
    for name, _ in attention_modules(model):
        stage = next((s for s in stages if name.startswith(s + ".")), None)
        groups.setdefault(f"rollout {stage}" if stage else "rollout", []).append(block_name(name))
    return groups


def explain_batch(model, x, targets, methods, layers):
    """{method: {layer, block or group: (B, ...) maps}} for a batch of normalised images."""
    maps = {}
    if "gradcam" in methods:
        maps["gradcam"] = gradcam(model, x, targets, layers)
    if "attention" in methods or "rollout" in methods:
        maps.update(attention_and_rollout(model, x, methods))
    return maps


# ---------------------------------------------------------------- boxes


def box_cover(boxes, size):
    """(B, 4) boxes (x0, y0, x1, y1, inclusive pixels of the 64x64 image) -> (B, h, w): the share
    of each map cell's area that the box covers, the map's cells tiling the image."""
    position = torch.arange(IMAGE_SIZE, device=boxes.device)
    inside_x = (position >= boxes[:, 0:1]) & (position <= boxes[:, 2:3])
    inside_y = (position >= boxes[:, 1:2]) & (position <= boxes[:, 3:4])
    mask = (inside_y[:, :, None] & inside_x[:, None, :]).float()
    return F.adaptive_avg_pool2d(mask[:, None], size)[:, 0]


def box_shares(maps, boxes):
    """(share of each map's sum inside the box, the box's share of the image, usable): a map
    that is zero everywhere (Grad-CAM can be) has no share and is not usable."""
    cover = box_cover(boxes, maps.shape[-2:])
    total = maps.flatten(1).sum(dim=1)
    inside = (maps * cover).flatten(1).sum(dim=1)
    return inside / total.clamp(min=1e-30), cover.flatten(1).mean(dim=1), total > 0


def box_score(model, x, y, boxes, device, methods, layers, batch_size, target):
    """Rows {method, map, share_in_box, uniform, images, zero_maps} over the whole split: the mean
    share of each map's energy inside the object's box, against what a uniform map gets."""
    sums = {}
    with progress_bar(len(y), "box score", "img") as bar:
        for start in range(0, len(y), batch_size):
            images = normalize(x[start : start + batch_size].to(device))
            labels = y[start : start + batch_size].to(device)
            targets = None if "gradcam" not in methods else labels if target == "true" else predictions(model, images)[0]
            for method, by_name in explain_batch(model, images, targets, methods, layers).items():
                for name, maps in by_name.items():
                    maps = maps.float().mean(dim=1) if maps.dim() == 4 else maps.float()  # heads averaged
                    share, uniform, usable = box_shares(maps, boxes[start : start + batch_size].to(device))
                    total = sums.setdefault((method, name), torch.zeros(4, device=device))  # float32: MPS has no float64
                    total += torch.stack([(share * usable).sum(), (uniform * usable).sum(), usable.sum(), (~usable).sum()])
            bar.update(len(labels))
    rows = []
    for (method, name), total in sums.items():
        share, uniform, usable, zero = total.tolist()
        rows.append({"method": method, "map": name, "share_in_box": share / usable if usable else None,
                     "uniform": uniform / usable if usable else None, "images": int(usable), "zero_maps": int(zero)})
    return rows


def print_box_scores(rows, split, target):
    print(f"share of each map inside the object's box ({split} split, target: {target}), "
          f"against a uniform map's share (the box's area)")
    print(f"  {'method':<10} {'map':<32} {'in box':>8} {'uniform':>8} {'ratio':>6} {'images':>7}")
    for row in rows:
        if row["share_in_box"] is None:
            print(f"  {row['method']:<10} {row['map']:<32} every map is zero ({row['zero_maps']:,} images)")
            continue
        zero = f"  ({row['zero_maps']:,} all-zero maps left out)" if row["zero_maps"] else ""
        print(f"  {row['method']:<10} {row['map']:<32} {row['share_in_box']:>8.3f} {row['uniform']:>8.3f} "
              f"{row['share_in_box'] / row['uniform']:>6.2f} {row['images']:>7,}{zero}")


# ---------------------------------------------------------------- pictures


@torch.no_grad()
def predictions(model, images):
    """(predicted class, its probability) per image."""
    confidence, predicted = model.eval()(images).float().softmax(dim=1).max(dim=1)
    return predicted, confidence


def upsampled(maps):
    """(B, h, w) maps -> (B, 64, 64), bilinear, each scaled to [0, 1] by its maximum."""
    big = F.interpolate(maps.float()[:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)[:, 0]
    return big / big.flatten(1).amax(dim=1).clamp(min=1e-30)[:, None, None]


def draw_grid(pixels, row_titles, headers, cells, out, suptitle):
    """A grid of pictures, one row per entry of pixels (64x64x3 images): the image titled
    row_titles[i], then cells[i][j] (an (h, w) map, or None for an empty place) over the image,
    titled headers[j]."""
    plt = pyplot()

    rows, cols = len(pixels), 1 + len(headers)
    fig, axes = plt.subplots(rows, cols, figsize=(max(1.8 * cols, 5), 2.2 * rows + 0.8), squeeze=False,
                             layout="constrained")  # (room for every title, whatever the number of rows)
    for i, image in enumerate(pixels):
        axes[i][0].imshow(image)
        axes[i][0].set_title(row_titles[i], fontsize=7)
        for j, (header, cell) in enumerate(zip(headers, cells[i]), 1):
            if cell is None:
                axes[i][j].axis("off")
                continue
            axes[i][j].imshow(image)
            axes[i][j].imshow(upsampled(cell[None])[0].cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[i][j].set_title(header if cell.max() > 0 else f"{header}\n(zero everywhere)", fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(suptitle, fontsize=9)
    save_figure(fig, out)


def draw_method(method, maps, pixels, titles, out_dir, about):
    """<method>.png: a row per image, a column per layer, block or rollout group (heads averaged)."""
    names = list(maps)
    flat = {name: m.float().mean(dim=1) if m.dim() == 4 else m for name, m in maps.items()}
    cells = [[flat[name][i] for name in names] for i in range(len(pixels))]
    path = os.path.join(out_dir, f"{method}.png")
    draw_grid(pixels, titles, names, cells, path, f"{method}\n{about}\n(each map scaled to its own maximum)")
    return path


def draw_heads(attention, image, title, out_dir, about):
    """attention-heads.png: every head of every block for one image (a row per block)."""
    width = max(m.shape[1] for m in attention.values())
    cells = [[m[0, h] if h < m.shape[1] else None for h in range(width)] for m in attention.values()]
    path = os.path.join(out_dir, "attention-heads.png")
    image_title = title.replace("\n", ", ")
    draw_grid([image] * len(attention), list(attention), [f"head {h}" for h in range(width)], cells, path,
              f"attention per head\n{image_title}\n{about}")
    return path


# ---------------------------------------------------------------- choosing the images


def matching_classes(name, classes, class_names):
    """The labels whose wnid is name, or one of whose names is name (any case); else those whose
    names contain it."""
    wanted = name.lower()
    exact = [i for i, (wnid, names) in enumerate(zip(classes, class_names))
             if wanted == wnid.lower() or wanted in (n.strip().lower() for n in names.split(","))]
    return exact or [i for i, names in enumerate(class_names) if wanted in names.lower()]


def chosen_indices(args, y, classes, class_names):
    """The split's images to draw: --images, the first --count of --class, or the first --count."""
    if args.images:
        bad = [i for i in args.images if not 0 <= i < len(y)]
        if bad:
            raise DataError(f"--images {bad[0]} is not an image of the {args.split} split (0 to {len(y) - 1})")
        return list(dict.fromkeys(args.images))
    if args.cls:
        labels = matching_classes(args.cls, classes, class_names)
        if not labels:
            raise DataError(f"--class {args.cls}: no class has that wnid or name (words.txt lists the names)")
        if len(labels) > 1:
            listed = "; ".join(f"{classes[i]} ({short_name(class_names[i])})" for i in labels[:8])
            raise DataError(f"--class {args.cls} matches {len(labels)} classes: {listed}; give one's wnid or full name")
        found = torch.nonzero(y == labels[0]).flatten()[: args.count].tolist()
        if not found:
            raise DataError(f"the {args.split} split has no image of {classes[labels[0]]}")
        return found
    return list(range(min(args.count, len(y))))


# ---------------------------------------------------------------- command line


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("checkpoint", help="a checkpoint (train.py's, or a Lightning .ckpt)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--images", nargs="+", type=int, metavar="I", help="these images of the split (by position)")
    which.add_argument("--class", dest="cls", metavar="NAME", help="the first --count images of this class (wnid or name)")
    which.add_argument("--files", nargs="+", metavar="PATH",
                       help="your own images, and the images in these folders (any size or mode: converted to RGB, "
                            "centre-cropped and resized to 64x64, as evaluate.py --files)")
    parser.add_argument("--count", type=int, default=8, help="images drawn without --images")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="where the images come from")
    parser.add_argument("--method", nargs="+", choices=METHODS,
                        help="default: every method the model has (attention and rollout need transformer blocks)")
    parser.add_argument("--layer", nargs="+", metavar="NAME", help="Grad-CAM's layers (--list-layers; default: see below)")
    parser.add_argument("--target", choices=("pred", "true"), default="pred", help="Grad-CAM's class: predicted, or the label")
    parser.add_argument("--list-layers", action="store_true", help="list the layers Grad-CAM can use, and the blocks")
    parser.add_argument("--box-score", action="store_true",
                        help="also score every map over the whole split: its share inside the object's box")
    parser.add_argument("--limit", type=int, metavar="N", help="--box-score over the split's first N images only")
    parser.add_argument("--out", default="explain", help="the folder for the pictures, maps.pt and box_score.json")
    parser.add_argument("--model", choices=tuple(MODELS),
                        help="the architecture of a foreign checkpoint whose parameter names cannot tell, as in "
                             "evaluate.py (with the model settings below where they differ from its defaults)")
    parser.add_argument("--data-dir", help="prepared data (default: the one the checkpoint was trained on, else data)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward and backward pass (--box-score)")
    parser.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="the raw trained weights of a run that kept an EMA")
    add_setting_flags(parser)
    args = parser.parse_args(argv)
    for flag in ("count", "batch_size", "limit"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.files and args.target == "true":
        parser.error("--target true needs labelled images: your --files have none")
    if args.files and args.box_score:
        parser.error("--box-score needs the split's object boxes: not with --files")
    if args.limit and not args.box_score:
        parser.error("--limit is for --box-score (the pictures take --images, --class or --count)")
    if args.box_score and args.split == "train":
        parser.error("--box-score: the object boxes are the val set's: use --split val or test")
    return args


def chosen_methods(args, model):
    """The methods asked for, or every method the model has (Grad-CAM only where captum is installed)."""
    has_attention = bool(attention_modules(model))
    if args.method:
        missing = [m for m in args.method if m != "gradcam" and not has_attention]
        if missing:
            raise DataError(f"{model.model_name} has no attention (no transformer blocks): --method {missing[0]} does not apply")
        return list(dict.fromkeys(args.method))
    try:
        import captum  # noqa: F401
    except ImportError:
        if not has_attention:
            raise DataError(f"{CAPTUM_HINT} ({model.model_name} has no attention to draw instead)") from None
        print(f"note: {CAPTUM_HINT}; drawing the attention only", file=sys.stderr)
        return ["attention", "rollout"]
    return ["gradcam", "attention", "rollout"] if has_attention else ["gradcam"]


def chosen_layers(args, model, shapes):
    layers = list(dict.fromkeys(args.layer or [default_layer(model, shapes)]))
    for layer in layers:
        if layer not in shapes:
            raise DataError(f"--layer {layer} is not a module of {model.model_name} with a feature map "
                            "(`--list-layers` lists them)")
    return layers


def labelled_images(args, checkpoint, model):
    """(64x64x3 uint8 images, labels or None, what each is, classes, class names, the data or None)."""
    data_dir = data_dir_of(checkpoint, args.data_dir)
    if args.files:
        classes, class_names = class_names_for(checkpoint, data_dir)
        images, unreadable = read_images(own_image_files(args.files), load_any_image)
        report_unreadable(unreadable)
        if not images:
            raise DataError("none of the images is readable: nothing to explain")
        pixels = torch.from_numpy(np.stack([p for _, p in images]))
        return pixels, None, [{"file": path} for path, _ in images], classes, class_names, None
    data = checked_data(checkpoint, model, args.checkpoint, data_dir)
    x, y = make_splits(data)[args.split]
    indices = chosen_indices(args, y, data.classes, data.class_names)
    return x[indices], y[indices], [{"index": i} for i in indices], data.classes, data.class_names, data


def run(args):
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint, args.checkpoint, use_ema=args.ema, model_name=args.model,
                                 settings=given_settings(args))
    device = resolve_device(args.device)
    model = model.to(device).eval()
    shapes = map_shapes(model, device)
    if args.list_layers:
        return print_layers(model, shapes, args.checkpoint)
    methods = chosen_methods(args, model)
    layers = chosen_layers(args, model, shapes)
    ensure_dir(args.out, f"--out {args.out}")
    pixels, labels, what, classes, class_names, data = labelled_images(args, checkpoint, model)
    scores = None
    if args.box_score:  # first: the slow part fails early on data prepared without boxes
        x, y = make_splits(data)[args.split]
        boxes = split_boxes(data, args.split)
        scores = box_score(model, x[: args.limit], y[: args.limit], boxes[: args.limit], device, methods, layers,
                           args.batch_size, args.target)
    images = normalize(pixels.to(device))
    predicted, confidence = predictions(model, images)
    targets = labels.to(device) if args.target == "true" else predicted
    maps = explain_batch(model, images, targets, methods, layers)
    entries = describe_images(what, labels, predicted, confidence, pixels, maps, classes)
    titles = [picture_title(entry, class_names, classes) for entry in entries]
    about = f"{model.model_name}, {short_label(args.checkpoint)}" + ("" if args.files else f", {args.split} split")
    try:
        remove_earlier_outputs(args.out)
        pictures = [draw_method(method, by_name, list(pixels.numpy()), titles, args.out,
                                about + (f", target: the {TARGETS[args.target]} class" if method == "gradcam" else ""))
                    for method, by_name in maps.items()]
        if "attention" in maps:
            pictures.append(draw_heads({b: m[:1] for b, m in maps["attention"].items()}, pixels[0].numpy(), titles[0],
                                       args.out, about))
    except ImportError:
        print(f"note: {MATPLOTLIB_HINT} to draw the pictures", file=sys.stderr)
        pictures = ["none"]
    saved = os.path.join(args.out, "maps.pt")
    save_checkpoint({"checkpoint": args.checkpoint, "model": model.model_name, "split": None if args.files else args.split,
                     "target": args.target, "classes": classes, "images": entries}, saved)
    print(f"pictures: {', '.join(pictures)}; maps: {saved}")
    if scores is not None:
        print_box_scores(scores, args.split, args.target)
        path = os.path.join(args.out, "box_score.json")
        write_json(path, {"checkpoint": args.checkpoint, "model": model.model_name, "split": args.split,
                          "target": args.target, "rows": scores})
        print(f"box scores: {path}")
    return entries, scores


def remove_earlier_outputs(out_dir):
    """An earlier explain.py run's files in out_dir, which this run's would otherwise sit beside
    as if they belonged together."""
    for name in OUTPUTS:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            os.remove(path)


def describe_images(what, labels, predicted, confidence, pixels, maps, classes):
    """maps.pt's entries: per image, what it is, its true and predicted label, and every raw map
    at its own resolution ({method: {layer, block or group: map}}; attention maps per head)."""
    entries = []
    for i, entry in enumerate(what):
        true = None if labels is None else int(labels[i])
        entries.append({**entry, "true_label": true, "true": None if true is None else classes[true],
                        "predicted_label": int(predicted[i]), "predicted": classes[int(predicted[i])],
                        "confidence": float(confidence[i]), "pixels": pixels[i].clone(),
                        "maps": {method: {name: m[i].detach().float().cpu().clone() for name, m in by_name.items()}
                                 for method, by_name in maps.items()}})
    return entries


def picture_title(entry, class_names, classes):
    name = lambda label: short_name(class_names[label])  # noqa: E731
    first = f"#{entry['index']}" if "index" in entry else os.path.basename(entry["file"])
    true = f"\ntrue: {name(entry['true_label'])}" if entry["true_label"] is not None else ""
    return f"{first}{true}\npred: {name(entry['predicted_label'])} {entry['confidence']:.0%}"


def main(argv=None):
    return exit_code_of(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
