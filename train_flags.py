"""train.py's command line: the flags with their defaults (a --recipe's presets), what was given
explicitly, and the checks that turn a bad flag into one line before any work; the augmentation,
model settings and recipe summary they describe. Not here: the loop (train.py), resuming a run
(resume.py), the presets themselves (recipe.py).
"""
import argparse
import math

import torch

from augment import MAGNITUDE_BINS, Augmentation, Mixing
from cli import ArgumentParser
from constants import IMAGE_SIZE
from data import ResolutionSchedule
from errors import DataError
from evaluation import TTA_CHOICES
from model import DEFAULT_MODEL, MODELS, add_setting_flags, build_model, given_settings, settings_of
from recipe import NO_AUGMENTATION, OPTIMIZERS, PRESET_MODEL_SETTINGS, PRESETS, RECIPE_FLAGS, warmup_epochs

LOGGERS = ("tensorboard", "wandb")  # --logger's choices (loggers.py)

DESCRIPTION = "Train a model on prepared Tiny ImageNet with a plain PyTorch loop."  # --help's first line


def build_parser(add_help=True):
    parser = ArgumentParser(description=DESCRIPTION, add_help=add_help)
    add_data_and_model_flags(parser)
    add_recipe_flags(parser)
    add_augmentation_flags(parser)
    add_system_flags(parser)
    return parser


def add_data_and_model_flags(parser):
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", default="data", help="prepared by prepare_data.py")
    data.add_argument("--batch-size", type=int, default=64,
                      help="images per optimizer step, over all processes (with --grad-accum: per forward pass)")
    data.add_argument("--grad-accum", type=int, default=1, metavar="N",
                      help="gradient accumulation: each optimizer step sums the gradients of N batches of --batch-size "
                           "(an effective batch of N x --batch-size, the memory of one)")
    data.add_argument("--eval-batch-size", type=int, default=256, help="images per batch in validation and test")
    data.add_argument("--tta", default="none", choices=TTA_CHOICES,
                      help="test-time augmentation in validation and test (flip: the mean of the logits of each "
                           "image and its mirror image); recorded, so evaluate.py uses it too")
    data.add_argument("--eval-amp", action=argparse.BooleanOptionalAction, default=False,
                      help="validate and test under the training's autocast (bf16 here: about twice as fast on a CPU); "
                           "off: fp32, metrics independent of --amp; recorded, so evaluate.py uses it too")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=DEFAULT_MODEL, choices=tuple(MODELS),
                       help="cvt-simplified: the notebook's; `python model.py --list` shows them all")
    add_setting_flags(parser)


def add_recipe_flags(parser):
    optim = parser.add_argument_group("recipe (the defaults shown are those of the --recipe given, seed (the "
                                      "notebook's) if none; explicit flags override them)")
    optim.add_argument("--recipe", default="seed", choices=tuple(PRESETS),
                       help="seed: Adam 1e-3 constant; study: AdamW 1e-4, wd 1e-3, smoothing 0.1, 5 warm-up "
                            "epochs, cosine; improved (measured: benchmarks/README.md): AdamW 5e-3, wd 0.05, smoothing 0.1, "
                            "1 warm-up epoch, cosine, grad clip 1; vit-small-data: the literature's for small ViTs "
                            "(DeiT's: AdamW 1e-3, wd 0.05, batch 128, 10%% warm-up, cosine, smoothing 0.1, "
                            "stochastic depth 0.1, AutoAugment, MixUp/CutMix, random erasing 0.25, repeated aug 3); "
                            "speedrun (the CPU hour's candidate, barely tuned): convnet, SGD 0.1 Nesterov, batch 128, "
                            "linear to 0, smoothing 0.2, --low-res 32:90%%, flip TTA, bf16 evaluation")
    optim.add_argument("--epochs", type=int, default=10, help="epochs to train (more with --resume extends a run)")
    optim.add_argument("--steps", type=int,
                       help="train exactly this many optimizer steps instead (the last epoch partial); --epochs follows")
    optim.add_argument("--time-budget", type=float, metavar="MINUTES",
                       help="fit the run into MINUTES of wall time, from the start of train.py to the end of its test: "
                            "a probe of a few steps at each training side fixes --steps (recorded in config.json)")
    optim.add_argument("--optimizer", choices=OPTIMIZERS,
                       help="adam: L2 weight decay; adamw: decoupled; sgd: Nesterov momentum 0.9, L2 weight decay")
    optim.add_argument("--lr", type=float, help="peak learning rate")
    optim.add_argument("--weight-decay", type=float, help="not applied to biases and LayerNorm weights")
    optim.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"),
                       help="set every step; cosine and linear end at --min-lr on the last step")
    optim.add_argument("--warmup-epochs", type=epochs_or_percent,
                       help="linear warm-up from --min-lr (may be fractional, or P%% of --epochs)")
    optim.add_argument("--min-lr", type=float, help="where the warm-up starts and the cosine or linear decay ends")
    optim.add_argument("--label-smoothing", type=float, help="of the training loss (val and test losses are plain)")
    optim.add_argument("--grad-clip", type=float, help="max gradient norm; 0: off")
    optim.add_argument("--ema-decay", type=float, help="EMA of the weights, evaluated and saved; 0: off")
    optim.add_argument("--low-res", metavar="SIDE:P%,...",
                       help="progressive resizing: train at SIDE px until P%% of the steps (then the next phase), "
                            f"and at {IMAGE_SIZE} px after the last, e.g. 32:60%%,48:85%%; validation and test at {IMAGE_SIZE}")
    optim.add_argument("--seed", type=int, default=0, help="model init, dropout, shuffling and augmentation")
    optim.add_argument("--lr-find", action="store_true",
                       help="instead of training: the learning-rate range test with this model, data and recipe (lr "
                            "growing geometrically from 1e-7 to 10); writes lr_find.csv and lr_find.png in --run-dir "
                            "and suggests an --lr; leaves no run behind")
    optim.add_argument("--lr-find-steps", type=int, default=200, metavar="N", help="steps of the range test at most")
    optim.set_defaults(**PRESETS["seed"])


def add_augmentation_flags(parser):
    augment = parser.add_argument_group(
        "augmentation after the notebook's crop and flip, on whole batches on the device (defaults: the --recipe's; "
        "operations and magnitudes of torchvision.transforms.v2)")
    augment.add_argument("--randaugment", nargs="?", const="2,9", metavar="N,M",
                         help="RandAugment: N operations per image at magnitude M of 31 (2,9 when no value is given)")
    augment.add_argument("--trivialaugment", action=argparse.BooleanOptionalAction, help="TrivialAugmentWide")
    augment.add_argument("--autoaugment", action=argparse.BooleanOptionalAction, help="AutoAugment, ImageNet policy")
    augment.add_argument("--random-erase", type=float, metavar="P",
                         help="random erasing with probability P per image (torchvision's scale and ratio, fill 0)")
    augment.add_argument("--mixup", type=float, metavar="ALPHA", help="MixUp's Beta(alpha, alpha); 0: off")
    augment.add_argument("--cutmix", type=float, metavar="ALPHA", help="CutMix's Beta(alpha, alpha); 0: off")
    augment.add_argument("--mix-prob", type=float, metavar="P", help="probability that a batch is mixed")
    augment.add_argument("--mix-switch-prob", type=float, metavar="P",
                         help="with both on, probability of CutMix rather than MixUp for a mixed batch")
    augment.add_argument("--repeat-aug", type=int, metavar="K",
                         help="repeated augmentation: each image K times per epoch, differently augmented "
                              "(the epoch keeps the dataset's length)")


def add_system_flags(parser):
    system = parser.add_argument_group("system")
    system.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    system.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast for training (fp16 + GradScaler on GPUs without bf16); "
                             "default: on for CUDA and for CPUs with native bf16 (AMX, AVX512-BF16)")
    system.add_argument("--amp-dtype", default="auto", choices=("auto", "bfloat16", "float16"),
                        help="auto: bf16 where supported, else fp16 with a GradScaler")
    system.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model; default: on for CUDA")
    system.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                        help="torch.compile's mode")
    system.add_argument("--run-dir", help="output directory (default: runs/<date-time>; with --resume, the checkpoint's)")
    system.add_argument("--resume", metavar="CHECKPOINT",
                        help="continue the run saved in this last.pt, with its settings (more --epochs is fine)")
    system.add_argument("--allow-other-data", action="store_true",
                        help="with --resume: go on with other data than the run's (same classes), recorded in config.json")
    system.add_argument("--sync-bn", action="store_true",
                        help="under torchrun, BatchNorm statistics over all processes (SyncBatchNorm, CUDA only); "
                             "without it each process normalises its own share of the batch")
    system.add_argument("--save-top-k", type=int, default=0, metavar="K",
                        help="also keep the checkpoints of the K best epochs by val top-1 as epoch-NNN.pt (for average.py); "
                             "0: only best.pt and last.pt")
    system.add_argument("--logger", nargs="+", default=[], choices=LOGGERS,
                        help="also log to TensorBoard (event files in the run directory) and/or W&B (WANDB_MODE=offline "
                             "works without a network); metrics.csv is always written; --resume keeps the run's loggers")
    system.add_argument("--log-every", type=int, default=20,
                        help="steps between progress updates and loss checks (a CPU-GPU sync)")


def explicit_flags(argv):
    """{dest: value} of the flags given on the command line (not defaulted)."""
    probe = build_parser(add_help=False)  # --help is for the real parser, which shows the defaults
    probe.set_defaults(**dict.fromkeys(vars(probe.parse_args([])), None))
    return {key: value for key, value in vars(probe.parse_known_args(argv)[0]).items() if value is not None}


def parse_args(argv):
    parser = build_parser()
    given = explicit_flags(argv)
    parser.set_defaults(**PRESETS[given.get("recipe", "seed")])
    args = parser.parse_args(argv)
    args.given = sorted(given)
    args.warmup_spec, args.notes, args.earlier_data, args.budget_plan = args.warmup_epochs, [], [], None
    args.logger, args.wandb_id = sorted(set(args.logger)), None  # (the id: made when the run starts, or the run's)
    check_length(parser, args, given)
    # on --resume the run's own epochs apply; with --steps or --time-budget, they are known once the data is
    if not (args.resume or args.steps or args.time_budget):
        args.warmup_epochs, warmup_note = warmup_epochs(args.warmup_spec, args.epochs)
        args.notes += [warmup_note] if warmup_note else []
        if warmup_note and "warmup_epochs" in given and not args.lr_find:  # (the sweep replaces the schedule)
            parser.error(f"--warmup-epochs {args.warmup_spec} does not end before the run does (--epochs {args.epochs}): "
                         "give a shorter warm-up")
    # what the recipe set, as this run's epochs resolve it (kept on --resume): compare.py labels a
    # run by how it differs from its recipe, from its own record
    args.recipe_defaults = {key: parser.get_default(key) for key in ("batch_size", *RECIPE_FLAGS)}
    if not (args.steps or args.time_budget):  # (else resolve_length resolves it)
        args.recipe_defaults["warmup_epochs"] = warmup_epochs(args.recipe_defaults["warmup_epochs"], args.epochs)[0]
    if args.allow_other_data and not args.resume:
        parser.error("--allow-other-data goes with --resume")
    check_augmentation(parser, args, given)
    check_lr_find(parser, args, given)
    for flag in ("epochs", "batch_size", "grad_accum", "eval_batch_size", "log_every", "lr_find_steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    for flag in ("lr",):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.save_top_k < 0:
        parser.error(f"--save-top-k must be 0 (off) or more, got {args.save_top_k}")
    for flag in ("weight_decay", "grad_clip") + (() if args.resume or args.steps or args.time_budget else ("warmup_epochs",)):
        if not 0 <= getattr(args, flag) < math.inf:
            parser.error(f"--{flag.replace('_', '-')} must be non-negative, got {getattr(args, flag)}")
    for flag in ("label_smoothing", "ema_decay"):
        if not 0 <= getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be in [0, 1), got {getattr(args, flag)}")
    if not 0 <= args.min_lr <= args.lr:
        parser.error(f"--min-lr must be in [0, --lr={args.lr}], got {args.min_lr}")
    try:
        sides = [side for side, _ in ResolutionSchedule.parse(args.low_res)]
    except ValueError as error:
        parser.error(f"--low-res {error}")
    if not args.resume:  # (a resumed run's model is the checkpoint's, checked against it)
        check_model(parser, args, sides, "low_res" in given)
    return args


def check_length(parser, args, given):
    """--epochs, --steps and --time-budget: one of them says how long a new run is; a resumed run
    keeps its own length (more --epochs extends a run that has no planned --steps)."""
    chosen = [flag for flag in ("epochs", "steps", "time_budget") if flag in given]
    if len(chosen) > 1:
        parser.error(f"{' and '.join(flag_name(flag) for flag in chosen)} each say how long the run is: give one")
    if args.resume and {"steps", "time_budget"} & set(given):
        parser.error(f"{flag_name(chosen[0])} plans a new run; --resume continues a run as it was planned")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.time_budget is not None and not 0 < args.time_budget < math.inf:
        parser.error(f"--time-budget must be a positive number of minutes, got {args.time_budget}")


def check_lr_find(parser, args, given):
    """--lr-find trains no run: the flags that say how long a run is, or continue one, do not go with it."""
    if not args.lr_find:
        if "lr_find_steps" in given:
            parser.error("--lr-find-steps goes with --lr-find")
        return
    clashing = [flag for flag in ("resume", "steps", "time_budget", "epochs", "save_top_k", "logger") if flag in given]
    if clashing:
        parser.error(f"--lr-find runs its own --lr-find-steps and trains no run: drop {flag_name(clashing[0])}")


def flag_name(dest):
    return f"--{dest.replace('_', '-')}"


def resolve_length(args, steps_per_epoch):
    """With --steps (given, or planned by --time-budget): the epochs they span (the last one
    partial) and the warm-up as a share of them; a given warm-up that would not end before the
    run does is a DataError."""
    if not args.steps:
        return
    epochs = args.steps / steps_per_epoch
    args.epochs = math.ceil(epochs)  # (on --resume too: --allow-other-data may bring another epoch length)
    if args.resume:
        return
    args.warmup_epochs, note = warmup_epochs(args.warmup_spec, epochs)
    if note and "warmup_epochs" in args.given:
        raise DataError(f"--warmup-epochs {args.warmup_spec} does not end before the run does ({args.steps} steps, "
                        f"{epochs:.2f} epochs): give a shorter warm-up, or a percentage")
    args.recipe_defaults["warmup_epochs"] = warmup_epochs(args.recipe_defaults["warmup_epochs"], epochs)[0]
    args.notes += [note] if note else []


def check_model(parser, args, sides, low_res_given):
    """Every check the model makes, on the meta device at no cost; and under --low-res, that it
    takes images of those sides (the CNN's classifier and the ViT's positions are sized for 64).
    A recipe's progressive resizing is its default, not a demand: on such a model the run stays
    at 64 px and a note says so; a --low-res the user gave is refused."""
    with torch.device("meta"):
        try:
            model = build_model(args.model, 1, **model_settings(args))
        except ValueError as error:
            parser.error(str(error))
        for side in sides:
            try:
                model(torch.empty(1, 3, side, side))
            except RuntimeError:
                if low_res_given:
                    parser.error(f"--low-res: {args.model} takes only {IMAGE_SIZE}x{IMAGE_SIZE} images, not {side}x{side}")
                args.notes.append(f"{args.model} takes only {IMAGE_SIZE}x{IMAGE_SIZE} images: recipe {args.recipe}'s "
                                  f"progressive resizing ({args.low_res}) is left out")
                args.low_res = args.recipe_defaults["low_res"] = ""
                return


def epochs_or_percent(text):
    """--warmup-epochs: a number of epochs, or P% of --epochs (kept as text until the run's
    epochs are known: on --resume, the checkpoint's)."""
    try:
        value = float(text[:-1] if text.endswith("%") else text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"takes a number of epochs >= 0 or a percentage of --epochs such as 10%, not {text!r}")
    return text if text.endswith("%") else value


def randaugment_setting(text):
    """--randaugment N,M as (N, M), or ValueError."""
    num_ops, magnitude = (int(part) for part in text.split(","))
    if num_ops < 1 or not 0 <= magnitude < MAGNITUDE_BINS:
        raise ValueError
    return num_ops, magnitude


POLICY_FLAGS = ("randaugment", "trivialaugment", "autoaugment")


def check_augmentation(parser, args, given):
    """One policy at most: a policy given on the command line replaces the recipe's."""
    chosen = [flag for flag in POLICY_FLAGS if given.get(flag)]
    if len(chosen) > 1:
        parser.error(f"give one augmentation policy, not {' and '.join('--' + flag for flag in chosen)}")
    if chosen:
        for flag in POLICY_FLAGS:
            if flag != chosen[0] and flag not in given:
                setattr(args, flag, NO_AUGMENTATION[flag])
    if args.randaugment is not None:
        try:
            randaugment_setting(args.randaugment)
        except ValueError:
            parser.error(f"--randaugment takes N,M: N >= 1 operations per image at magnitude M in "
                         f"[0, {MAGNITUDE_BINS - 1}], got {args.randaugment!r}")
    for flag in ("random_erase", "mix_prob", "mix_switch_prob"):
        if not 0 <= getattr(args, flag) <= 1:
            parser.error(f"--{flag.replace('_', '-')} must be in [0, 1], got {getattr(args, flag)}")
    for flag in ("mixup", "cutmix"):
        if not 0 <= getattr(args, flag) < math.inf:
            parser.error(f"--{flag} must be a finite number >= 0 (0: off), got {getattr(args, flag)}")
    if args.repeat_aug < 1:
        parser.error(f"--repeat-aug must be at least 1, got {args.repeat_aug}")


def augmentation_of(args):
    """The Augmentation that the run's flags describe."""
    policy = next((flag for flag in POLICY_FLAGS if getattr(args, flag)), None)
    return Augmentation(
        policy=policy,
        randaugment=randaugment_setting(args.randaugment) if args.randaugment else (2, 9),
        erase=args.random_erase, mixing=Mixing(args.mixup, args.cutmix, args.mix_prob, args.mix_switch_prob),
        repeat=args.repeat_aug)


def model_settings(args):
    """The model settings of a new run: the recipe's where the model has them (stochastic depth
    of vit-small-data), then those given on the command line."""
    preset = {key: value for key, value in PRESET_MODEL_SETTINGS.get(args.recipe, {}).items() if key in settings_of(args.model)}
    return {**preset, **given_settings(args)}


def describe_recipe(args):
    parts = [f"{args.optimizer} lr {args.lr:g}", f"weight decay {args.weight_decay:g}"]
    if args.grad_accum > 1:
        parts.append(f"batch {args.batch_size * args.grad_accum} ({args.grad_accum} x {args.batch_size} accumulated)")
    if args.warmup_epochs:
        parts.append(f"{args.warmup_epochs:g} warm-up epoch{'' if args.warmup_epochs == 1 else 's'} from {args.min_lr:g}")
    parts.append("constant lr" if args.lr_schedule == "constant" else f"{args.lr_schedule} to {args.min_lr:g}")
    parts += [f"label smoothing {args.label_smoothing:g}"] if args.label_smoothing else []
    parts += [f"grad clip {args.grad_clip:g}"] if args.grad_clip else []
    parts += [f"EMA {args.ema_decay:g}"] if args.ema_decay else []
    augmentation = augmentation_of(args)
    if augmentation.policy:
        parts.append(f"RandAugment {args.randaugment}" if augmentation.policy == "randaugment" else augmentation.policy)
    parts += [f"random erasing {args.random_erase:g}"] if args.random_erase else []
    if augmentation.mixing.enabled:
        parts.append(f"MixUp {args.mixup:g} / CutMix {args.cutmix:g} (p {args.mix_prob:g}, switch {args.mix_switch_prob:g})")
    parts += [f"repeated augmentation {args.repeat_aug}"] if args.repeat_aug > 1 else []
    parts += [f"progressive resizing {args.low_res}, then {IMAGE_SIZE} px"] if args.low_res else []
    return ", ".join(parts)
