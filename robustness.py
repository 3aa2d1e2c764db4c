"""Accuracy under translation: how much each model's predictions change when the image moves.

    python robustness.py runs/cvt/best.pt runs/cnn/best.pt --plot shifts.png --json shifts.json
    python robustness.py runs/cvt/best.pt --shifts 0 2 4 --fill zero --limit 1000   # a quick look

The shift: the image is translated by (dx, dy) pixels in pixel space, before normalisation
(dx > 0 moves the content right, dy > 0 down); the pixels that enter are black (`zero`, like
the training crop's padding), mirrored (`reflect`: about the edge pixel, as F.pad's reflect
mode), or the wrapped-around content (`circular`, i.e. torch.roll). The image stays 64x64.
Each shift s > 0 is applied in six directions: horizontal (s, 0) and (-s, 0), vertical (0, s)
and (0, -s), diagonal (s, s) and (-s, -s).

Reported for every checkpoint, fill and shift: top-1 on the split; the agreement with the
unshifted prediction (the share of images whose top-1 does not change); the mean KL divergence
KL(unshifted softmax || shifted softmax). And the consistency of Zhang (2019, "Making
convolutional networks shift-invariant again"), adapted to 64x64: the image padded by k pixels
with the fill, two 64x64 crops at independent random offsets in [0, 2k] (seeded: the same
offsets for every checkpoint and fill), and the share of images whose two top-1 predictions
agree. At shift 0 the top-1 is evaluate.py's on the same split, exactly.

Common corruptions (--corruptions): Tiny-ImageNet-C's 15 corruptions at 5 severities
(corruptions.py: the 64 px constants of the authors' script, on whole batches on the device),
top-1 for each on the split, a "clean" row equal to evaluate.py's top-1 (the checkpoint's own
flip TTA and precision), the corruption error CE = 1 - top-1 averaged over severities, its mean
over corruptions, and with --baseline CKPT the paper's mCE and relative mCE normalised by that
model's errors:

    python robustness.py runs/cvt/best.pt --corruptions all --json corrupt.json --plot corrupt.png
    python robustness.py runs/a/best.pt runs/b/best.pt --corruptions all --baseline runs/cvt/best.pt
    python robustness.py runs/cvt/best.pt --corruptions fog,snow --severities 1 3 5 --show grid.png
"""
import sys

if __name__ == "__main__":  # before the imports below, which take a moment
    from cli import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import argparse
import math
import os

import torch
import torch.nn.functional as F

from checkpoint import load_checkpoint, model_from_checkpoint
from cli import ArgumentParser, exit_code_of, progress_bar, short_label
from figures import plot_or_note, pyplot, save_figure
from constants import IMAGE_SIZE
from data import load_packed, make_splits, normalize
from model import MODELS, add_setting_flags, given_settings
from corruptions import FAMILIES, SEVERITIES, corrupt, corruption_summary, parse_corruptions, setting_seed
from evaluation import checked_data, data_dir_of, evaluation_dtype, top_predictions, with_tta
from layout import check_output_path, write_rows
from runtime import amp_dtype, autocast, resolve_device

FILLS = ("zero", "reflect", "circular")
DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1))  # horizontal, vertical, diagonal
KEYS = ("checkpoint", "model", "split", "images", "fill", "dx", "dy", "top1", "agreement", "kl", "consistency", "k")
CORRUPTION_KEYS = ("checkpoint", "model", "split", "images", "corruption", "severity", "top1", "error", "seed", "baseline")
TRANSLATION_ONLY = ("shifts", "fill", "consistency_k")  # the flags that --corruptions does not take


# ---------------------------------------------------------------- the shift


def source_positions(size, shift, fill, count, device):
    """Along one axis of `size` pixels moved by `shift` (a number, or one value per image): for
    each of the `count` images and each output position, the input position it shows, and
    whether that lies inside the image."""
    if torch.is_tensor(shift):
        position = torch.arange(size, device=device) - shift[:, None]
    else:  # a number stays a number: no host-to-device copy per call
        position = (torch.arange(size, device=device) - shift).expand(count, size)
    inside = (position >= 0) & (position < size)
    if fill == "circular":
        position = position % size
    elif fill == "reflect":  # mirrored about the edge pixels, repeated for shifts beyond the image
        period = 2 * (size - 1)
        position = position % period
        position = torch.where(position >= size, period - position, position)
    else:  # zero: any inside position, blacked out below
        position = position.clamp(0, size - 1)
    return position, inside


def translate(x_uint8, dx, dy, fill):
    """(B, H, W, C) uint8 images translated by (dx, dy) pixels with the fill (see the module's
    docstring); dx and dy are numbers or one value per image (tensors on the images' device).
    One gather, no per-image work."""
    batch, height, width, _ = x_uint8.shape
    rows, rows_inside = source_positions(height, dy, fill, batch, x_uint8.device)
    cols, cols_inside = source_positions(width, dx, fill, batch, x_uint8.device)
    images = torch.arange(batch, device=x_uint8.device)[:, None, None]
    out = x_uint8[images, rows[:, :, None], cols[:, None, :]]
    if fill == "zero":
        out = out * (rows_inside[:, :, None] & cols_inside[:, None, :])[..., None]
    return out


def shift_list(shifts):
    """(dx, dy) of every shift swept: (0, 0) first, then each s > 0 in the six directions."""
    return [(0, 0)] + [(sx * s, sy * s) for s in sorted(set(shifts)) if s > 0 for sx, sy in DIRECTIONS]


def crop_offsets(count, k, seed):
    """Zhang's two random crops per image, as shifts: a crop at offset o in [0, 2k] of the image
    padded by k shows it moved by k - o. (count, 4): dx, dy of the first crop, then the second."""
    generator = torch.Generator().manual_seed(seed)
    return k - torch.randint(0, 2 * k + 1, (count, 4), generator=generator)


# ---------------------------------------------------------------- the sweep


@torch.no_grad()
def sweep(model, x, y, device, dtype, shifts, fills, batch_size, k=4, seed=0, bar=None):
    """{(fill, dx, dy): {"top1", "agreement", "kl"}} and {fill: consistency} of the model over the
    images x (uint8) with labels y. One forward per batch and shift; the sums stay on the device
    and are read once at the end."""
    model.eval()
    moves = [move for move in shift_list(shifts) if move != (0, 0)]
    # float32, not float64: Apple's MPS has none; counts stay exact up to 2**24 images
    sums = torch.zeros(len(fills), len(moves) + 1, 3, device=device)  # hits, agreements, KL
    consistent = torch.zeros(len(fills), device=device)
    offsets = crop_offsets(len(y), k, seed).to(device)
    x, y = x.to(device), y.to(device)  # once: the split on the device, as evaluate.py's loader has it on CUDA

    def predict(images):
        with autocast(device, dtype):
            logits = model(normalize(images)).float()
        return top_predictions(logits)[:, 0], logits.log_softmax(dim=1)

    for start in range(0, len(y), batch_size):
        images, labels = x[start : start + batch_size], y[start : start + batch_size]
        base, base_log_p = predict(images)  # the image itself, as evaluate.py sees it
        sums[:, 0, 0] += (base == labels).sum()
        sums[:, 0, 1] += len(labels)
        for f, fill in enumerate(fills):
            for m, (dx, dy) in enumerate(moves, 1):
                predicted, log_p = predict(translate(images, dx, dy, fill))
                kl = F.kl_div(log_p, base_log_p, log_target=True, reduction="sum")  # KL(base || shifted)
                sums[f, m] += torch.stack([(predicted == labels).sum(), (predicted == base).sum(), kl])
            pair = offsets[start : start + len(labels)]
            first, _ = predict(translate(images, pair[:, 0], pair[:, 1], fill))
            second, _ = predict(translate(images, pair[:, 2], pair[:, 3], fill))
            consistent[f] += (first == second).sum()
        if bar is not None:
            bar.update(len(labels) * forwards_per_image(shifts, fills))
    sums, consistent = (sums / len(y)).tolist(), (consistent / len(y)).tolist()  # one sync
    results = {}
    for f, fill in enumerate(fills):
        for m, (dx, dy) in enumerate([(0, 0), *moves]):
            top1, agreement, kl = sums[f][m]
            results[fill, dx, dy] = {"top1": top1, "agreement": agreement, "kl": kl}
    return results, dict(zip(fills, consistent))


def forwards_per_image(shifts, fills):
    return 1 + len(fills) * (len(shift_list(shifts)) - 1 + 2)


def rows_of(checkpoint_path, model_name, split, images, results, consistency, k):
    """The --json rows: one per fill and shift, then one consistency row per fill (dx = dy = None)."""
    common = {"checkpoint": checkpoint_path, "model": model_name, "split": split, "images": images}
    rows = [{**common, "fill": fill, "dx": dx, "dy": dy, **figures} for (fill, dx, dy), figures in results.items()]
    rows += [{**common, "fill": fill, "dx": None, "dy": None, "consistency": value, "k": k}
             for fill, value in consistency.items()]
    return rows


# ---------------------------------------------------------------- reports


def mean_by_shift(rows, fill, key):
    """{|shift|: the mean of key over the six directions of that shift} for one fill."""
    by_shift = {}
    for row in rows:
        if row["fill"] == fill and row["dx"] is not None:
            by_shift.setdefault(max(abs(row["dx"]), abs(row["dy"])), []).append(row[key])
    return {shift: sum(values) / len(values) for shift, values in sorted(by_shift.items())}


def print_report(rows, fills, k):
    first = rows[0]
    print(f"{first['checkpoint']} ({first['model']}), {first['split']} split, {first['images']:,} images; "
          f"mean over the six directions of each shift")
    shifts = list(mean_by_shift(rows, fills[0], "top1"))
    print(f"  {'fill':<9} {'':<10}" + "".join(f"{s:>7}" for s in shifts) + f"   consistency (k={k})")
    for fill in fills:
        consistency = next(row["consistency"] for row in rows if row["fill"] == fill and row["dx"] is None)
        for key, label in (("top1", "top-1 %"), ("agreement", "agree %")):
            values = mean_by_shift(rows, fill, key).values()
            tail = f"   {consistency:.2%}" if key == "top1" else ""
            print(f"  {fill if key == 'top1' else '':<9} {label:<10}" + "".join(f"{v * 100:>7.2f}" for v in values) + tail)


# The plot's panels: the shifts each shows, and the signed shift it plots them at.
PANELS = (("horizontal", lambda dx, dy: dy == 0, lambda dx, dy: dx, "dx in pixels (+: right)"),
          ("vertical", lambda dx, dy: dx == 0, lambda dx, dy: dy, "dy in pixels (+: down)"),
          ("diagonal", lambda dx, dy: dx == dy, lambda dx, dy: dx, "dx = dy in pixels (+: right and down)"))


def draw_plot(rows, out):
    """Top-1 against the signed shift, one panel per direction, a line per checkpoint and fill:
    colour per checkpoint, line style per fill."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2), sharey=True)
    shifted = [row for row in rows if row["dx"] is not None]
    checkpoints = list(dict.fromkeys(row["checkpoint"] for row in shifted))
    styles = dict(zip(FILLS, ("-", "--", ":")))
    for ax, (name, shown, signed, xlabel) in zip(axes, PANELS):
        for c, checkpoint in enumerate(checkpoints):
            for fill in dict.fromkeys(row["fill"] for row in shifted):
                mine = [row for row in shifted if row["checkpoint"] == checkpoint and row["fill"] == fill]
                points = sorted((signed(row["dx"], row["dy"]), row["top1"] * 100) for row in mine if shown(row["dx"], row["dy"]))
                ax.plot(*zip(*points), styles[fill], marker="o", markersize=3, color=f"C{c % 10}",
                        label=f"{short_label(checkpoint)} ({mine[0]['model']}), {fill}")
        ax.set_title(f"{name} shift")
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"{rows[0]['split']} top-1 (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    legend_rows = -(-len(labels) // 3)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize="small", frameon=False)
    fig.suptitle(f"top-1 under translation ({rows[0]['split']} split, {rows[0]['images']:,} images per point)")
    fig.tight_layout(rect=(0, 0.2 * legend_rows / fig.get_figheight() + 0.02, 1, 1))  # the legend below the panels
    save_figure(fig, out)


def write_outputs(rows, args):
    write_rows(rows, KEYS, args.json, args.csv)
    if args.plot:
        plot_or_note(draw_plot, rows, args.plot)


# ---------------------------------------------------------------- common corruptions


@torch.no_grad()
def corruption_sweep(model, x, y, device, dtype, settings, batch_size, seed, bar=None):
    """[clean top-1, then the top-1 under each (corruption, severity) of settings] over the images
    x (uint8) with labels y: each batch corrupted on the device by a generator seeded for that
    batch and setting; the hits stay on the device and are read once at the end."""
    model.eval()
    hits = torch.zeros(len(settings) + 1, device=device)
    x, y = x.to(device), y.to(device)

    def correct(images, labels):
        with autocast(device, dtype):
            return (model(normalize(images)).float().argmax(dim=1) == labels).sum()

    for start in range(0, len(y), batch_size):
        images, labels = x[start : start + batch_size], y[start : start + batch_size]
        hits[0] += correct(images, labels)
        for index, (name, severity) in enumerate(settings, 1):
            generator = torch.Generator(device).manual_seed(setting_seed(seed, name, severity, start))
            hits[index] += correct(corrupt(images, name, severity, generator), labels)
        if bar is not None:
            bar.update(len(labels) * (len(settings) + 1))
    return (hits / len(y)).tolist()  # one sync


def corruption_rows(path, model_name, split, images, settings, top1, seed, baseline=False):
    common = {"checkpoint": path, "model": model_name, "split": split, "images": images, "seed": seed, "baseline": baseline}
    named = [("clean", 0), *settings]
    return [{**common, "corruption": name, "severity": severity, "top1": value, "error": 1 - value}
            for (name, severity), value in zip(named, top1)]


def percent(value):
    return "n/a" if math.isnan(value) else f"{value:.1%}"  # (NaN: a baseline with no error to divide by)


def print_corruption_report(rows, baseline_rows=None, baseline=None):
    """A table of top-1 (%) per corruption and severity with each corruption's CE, then the mean CE
    (and, against a baseline, mCE and relative mCE)."""
    first, summary = rows[0], corruption_summary(rows, baseline_rows)
    severities = sorted({row["severity"] for row in rows if row["corruption"] != "clean"})
    print(f"{first['checkpoint']} ({first['model']}), {first['split']} split, {first['images']:,} images, seed {first['seed']}: "
          f"clean top-1 {1 - summary['clean_error']:.2%}")
    print(f"  {'top-1 %':<18}" + "".join(f"{'s' + str(s):>7}" for s in severities) + f"{'CE %':>8}"
          + (f"{'CE/base':>9}" if baseline_rows else ""))
    for name, ce in summary["ce"].items():
        values = [row["top1"] for row in rows if row["corruption"] == name]
        line = f"  {name:<18}" + "".join(f"{v * 100:>7.2f}" for v in values) + f"{ce * 100:>8.2f}"
        print(line + (f"{percent(summary['normalised_ce'][name]):>9}" if baseline_rows else ""))
    against = (f"; mCE {percent(summary['mce'])}, relative mCE {percent(summary['relative_mce'])} against {short_label(baseline)} (100%)"
               if baseline_rows else "")
    print(f"  mean CE (unnormalised) {summary['mean_ce']:.2%} over {len(summary['ce'])} corruptions{against}")
    return summary


def draw_corruption_plot(rows, out):
    """Top-1 against severity (0: clean), one panel per family, a colour per corruption and a line
    style per checkpoint."""
    plt = pyplot()
    measured = list(dict.fromkeys(row["corruption"] for row in rows if row["corruption"] != "clean"))
    families = [(family, [name for name in names if name in measured]) for family, names in FAMILIES.items()]
    families = [(family, names) for family, names in families if names]
    fig, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families), 4.6), sharey=True, squeeze=False)
    checkpoints = list(dict.fromkeys(row["checkpoint"] for row in rows))
    for ax, (family, names) in zip(axes[0], families):
        for c, checkpoint in enumerate(checkpoints):
            mine = [row for row in rows if row["checkpoint"] == checkpoint]
            clean = next(row["top1"] for row in mine if row["corruption"] == "clean")
            for n, name in enumerate(names):
                points = [(0, clean)] + [(row["severity"], row["top1"]) for row in mine if row["corruption"] == name]
                ax.plot([p[0] for p in points], [p[1] * 100 for p in points], ("-", "--", ":", "-.")[c % 4], marker="o",
                        markersize=3, color=f"C{n}", label=name if c == 0 else None)
        ax.set_title(family)
        ax.set_xlabel("severity (0: clean)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel(f"{rows[0]['split']} top-1 (%)")
    styles = ", ".join(f"{('solid', 'dashed', 'dotted', 'dash-dot')[c % 4]}: {short_label(path)}" for c, path in enumerate(checkpoints))
    fig.suptitle(f"top-1 under common corruptions ({rows[0]['images']:,} images per point; {styles})", fontsize="medium")
    fig.tight_layout()
    save_figure(fig, out)


def draw_corruption_grid(image, settings, seed, out):
    """One image under each corruption (rows) at each severity (columns; the first: clean)."""
    plt = pyplot()
    names = list(dict.fromkeys(name for name, _ in settings))
    severities = sorted({severity for _, severity in settings})
    fig, axes = plt.subplots(len(names), len(severities) + 1, figsize=(1.3 * (len(severities) + 1), 1.3 * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        axes[r][0].imshow(image.cpu().numpy())
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize="small")
        for c, severity in enumerate(severities, 1):
            generator = torch.Generator(image.device).manual_seed(setting_seed(seed, name, severity, 0))
            axes[r][c].imshow(corrupt(image[None], name, severity, generator)[0].cpu().numpy())
    for c, title in enumerate(["clean", *(f"severity {s}" for s in severities)]):
        axes[0][c].set_title(title, fontsize="small")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, out)


def run_corruptions(args):
    """--corruptions: every checkpoint (and --baseline) over the settings; the report, the outputs."""
    settings = [(name, severity) for name in args.corruptions for severity in args.severities]
    device = resolve_device(args.device)
    paths = list(dict.fromkeys([*args.checkpoints, *([args.baseline] if args.baseline else [])]))
    data_dirs = [checked_data_dir(path, args) for path in paths]  # all checked before the first sweep
    rows, by_path, splits = [], {}, {}
    for path, data_dir in zip(paths, data_dirs):
        checkpoint = load_checkpoint(path)
        model = with_tta(load_model(checkpoint, path, args).to(device), checkpoint.get("config", {}).get("tta") or "none")
        dtype = evaluation_dtype(args.amp, checkpoint, device)  # as evaluate.py evaluates it
        if os.path.realpath(data_dir) not in splits:
            x, y = make_splits(load_packed(data_dir))[args.split]
            splits[os.path.realpath(data_dir)] = x[: args.limit], y[: args.limit]
        x, y = splits[os.path.realpath(data_dir)]
        if args.show and not rows:
            plot_or_note(lambda image, out: draw_corruption_grid(image, settings, args.seed, out), x[0].to(device), args.show)
        with progress_bar(len(y) * (len(settings) + 1), f"corrupt {short_label(path)}", "img") as bar:
            top1 = corruption_sweep(model, x, y, device, dtype, settings, args.batch_size, args.seed, bar)
        by_path[path] = corruption_rows(path, getattr(model, "model_name", None), args.split, len(y), settings, top1, args.seed,
                                        baseline=path == args.baseline)
        rows += by_path[path]
        del model
    for path in paths:
        print_corruption_report(by_path[path], by_path.get(args.baseline), args.baseline)
    write_rows(rows, CORRUPTION_KEYS, args.json, args.csv)
    if args.plot:
        plot_or_note(draw_corruption_plot, rows, args.plot)
    return rows


# ---------------------------------------------------------------- command line


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoints (train.py's, or Lightning .ckpt)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="the images to shift")
    parser.add_argument("--shifts", nargs="+", type=int, default=[0, 1, 2, 4, 8, 16], metavar="S",
                        help="shift sizes in pixels (each in six directions; 0, the unshifted image, is always included)")
    parser.add_argument("--fill", nargs="+", choices=FILLS, default=list(FILLS), help="what enters the image")
    parser.add_argument("--limit", type=int, metavar="N", help="only the split's first N images (a quicker look)")
    parser.add_argument("--consistency-k", type=int, default=4, metavar="K",
                        help="Zhang's consistency: pad by K pixels, crop twice at random offsets in [0, 2K]")
    parser.add_argument("--seed", type=int, default=0, help="the consistency crops' seed")
    parser.add_argument("--data-dir", help="prepared data (default: the one each checkpoint was trained on, else data)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction,
                        help="bf16 autocast (fp16 on GPUs without bf16), as in evaluate.py; --no-amp: fp32; default: fp32 "
                             "under translation, the checkpoint's own evaluation precision under --corruptions")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="the raw trained weights of a run that kept an EMA")
    parser.add_argument("--model", choices=tuple(MODELS),
                        help="the architecture of a foreign checkpoint whose parameter names cannot tell, as in "
                             "evaluate.py (with the model settings below where they differ from its defaults)")
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    parser.add_argument("--csv", metavar="PATH", help="write the rows as CSV")
    parser.add_argument("--plot", metavar="OUT.png", help="draw top-1 against the shift (or the severity)")
    corruption = parser.add_argument_group("common corruptions (Tiny-ImageNet-C) instead of translation")
    corruption.add_argument("--corruptions", metavar="all|NAME,...",
                            help="all: the 15 of Tiny-ImageNet-C; or a comma list (also speckle_noise, gaussian_blur)")
    corruption.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES), metavar="S",
                            help="severities 1-5 (default: all)")
    corruption.add_argument("--baseline", metavar="CKPT", help="normalise by this model's errors: the paper's mCE and relative mCE")
    corruption.add_argument("--show", metavar="OUT.png", help="draw the split's first image under each corruption and severity")
    add_setting_flags(parser)
    args = parser.parse_args(argv)
    check_corruption_flags(parser, args, {key for key, value in vars(args).items() if value != parser.get_default(key)})
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if not all(0 <= s < IMAGE_SIZE for s in args.shifts):
        parser.error(f"--shifts must be between 0 and {IMAGE_SIZE - 1} pixels")
    if args.consistency_k < 0:
        parser.error("--consistency-k must be at least 0")
    args.fill = list(dict.fromkeys(args.fill))
    return args


def check_corruption_flags(parser, args, given):
    if args.corruptions is None:
        for flag in ("baseline", "show", "severities"):
            if flag in given:
                parser.error(f"--{flag} goes with --corruptions")
        return
    clashing = [flag for flag in TRANSLATION_ONLY if flag in given]
    if clashing:
        parser.error(f"--{clashing[0].replace('_', '-')} is translation's: --corruptions does not take it")
    try:
        args.corruptions = parse_corruptions(args.corruptions)
    except ValueError as error:
        parser.error(f"--corruptions: {error}")
    if not all(s in SEVERITIES for s in args.severities):
        parser.error("--severities are between 1 and 5")
    args.severities = sorted(set(args.severities))


def load_model(checkpoint, path, args):
    return model_from_checkpoint(checkpoint, path, use_ema=args.ema, model_name=args.model, settings=given_settings(args))


def checked_data_dir(path, args):
    """The data folder of a checkpoint, checked to fit its model (nothing of either kept)."""
    checkpoint = load_checkpoint(path)
    data_dir = data_dir_of(checkpoint, args.data_dir)
    checked_data(checkpoint, load_model(checkpoint, path, args), path, data_dir)
    return data_dir


def run(args):
    for path, flag in ((args.json, "--json"), (args.csv, "--csv"), (args.plot, "--plot"), (args.show, "--show")):
        if path:  # before any work: an unwritable output must not waste the sweep
            check_output_path(path, flag)
    if args.corruptions:
        return run_corruptions(args)
    device = resolve_device(args.device)
    dtype = amp_dtype(device, args.amp)
    data_dirs = [checked_data_dir(path, args) for path in args.checkpoints]  # all checked before the first sweep
    splits = {}  # one copy of each data set's split, shared by the checkpoints that trained on it
    rows = []
    for path, data_dir in zip(args.checkpoints, data_dirs):
        model = load_model(load_checkpoint(path), path, args)  # one model in memory at a time
        if os.path.realpath(data_dir) not in splits:
            x, y = make_splits(load_packed(data_dir))[args.split]
            splits[os.path.realpath(data_dir)] = x[: args.limit], y[: args.limit]
        x, y = splits[os.path.realpath(data_dir)]
        total = len(y) * forwards_per_image(args.shifts, args.fill)
        with progress_bar(total, f"shift {short_label(path)}", "img") as bar:
            results, consistency = sweep(model.to(device), x, y, device, dtype, args.shifts, args.fill,
                                         args.batch_size, args.consistency_k, args.seed, bar)
        mine = rows_of(path, model.model_name, args.split, len(y), results, consistency, args.consistency_k)
        del model  # (before the next checkpoint's is built)
        print_report(mine, args.fill, args.consistency_k)
        rows += mine
    write_outputs(rows, args)
    return rows


def main(argv=None):
    return exit_code_of(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
