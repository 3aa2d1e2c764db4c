"""Train a model on prepared Tiny ImageNet with a plain PyTorch loop.

    python train.py --epochs 10                      # the notebook's model and recipe: Adam, lr 1e-3, batch 64
    python train.py --epochs 10 --recipe improved    # AdamW, warm-up + cosine, ... (recipe.py)
    python train.py --model cnn --recipe study       # any model of `python model.py --list`
    python train.py --model vit --depth 6 --drop-path 0.2   # with its settings changed
    python train.py --resume runs/<name>/last.pt     # continue a run, with its own settings

Each run writes to its own directory: config.json, metrics.csv (one row per epoch, written
as it ends), last.pt and best.pt (by val top-1), test_metrics.json (the 8,000-image test
split, evaluated once at the end with the final weights and with best.pt when that differs:
loss, top-1, top-5, macro-F1) and curves.png; compare.py tabulates runs. On CUDA it uses bf16 autocast (fp16 + GradScaler on older GPUs),
torch.compile, TF32 and a fused optimizer by default; on CPU, eager with bf16 autocast where
the CPU has native bf16, else fp32.
"""
import sys

if __name__ == "__main__":  # before the imports below, which take a moment
    from cli import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import argparse
import copy
import gc
import math
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from cli import ArgumentParser, progress_bar, resume_command, shell_command
from curves import draw_curves_or_explain
from data import BatchLoader, load_packed, make_splits
from checkpoint import checkpoint_payload, load_checkpoint, model_from_checkpoint, restore_rng_states, rng_states, save_checkpoint
from evaluate import evaluate, evaluate_with_report, peak_memory, topk_correct
from errors import DataError
from layout import data_identity, ensure_dir
from model import (
    DEFAULT_MODEL,
    MODELS,
    SETTINGS,
    add_setting_flags,
    build_model,
    changed_settings,
    count_parameters,
    describe_settings,
    given_settings,
    settings_of,
)
from augment import MAGNITUDE_BINS, Augmentation, Mixing
from recipe import EMA, NO_AUGMENTATION, PRESET_MODEL_SETTINGS, PRESETS, RECIPE_FLAGS, LRSchedule, Updater, build_optimizer, warmup_epochs
from resume import NothingToDo, adopt_saved_settings, check_resumable, check_same_data, keep_saved_precision
from rundir import LAST, RunStatus, file_of, is_run, write_config, write_metrics, write_test_metrics
from runtime import (
    Distributed,
    amp_dtype,
    autocast,
    cleanup_distributed,
    configure_backends,
    default_amp,
    maybe_compile,
    setup_distributed,
)

NOT_RECORDED = ("given", "warmup_note")  # which flags were given, and a note printed once


class TrainingError(Exception):
    """Training cannot go on (e.g. the loss diverged); reported as one line, exit code 1."""


def build_parser(add_help=True):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", default="data", help="prepared by prepare_data.py")
    data.add_argument("--batch-size", type=int, default=64, help="images per optimizer step, over all processes")
    data.add_argument("--eval-batch-size", type=int, default=256, help="images per batch in validation and test")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=DEFAULT_MODEL, choices=tuple(MODELS),
                       help="cvt-simplified: the notebook's; `python model.py --list` shows them all")
    add_setting_flags(parser)
    optim = parser.add_argument_group("recipe (the defaults shown are those of the --recipe given, seed (the "
                                      "notebook's) if none; explicit flags override them)")
    optim.add_argument("--recipe", default="seed", choices=tuple(PRESETS),
                       help="seed: Adam 1e-3 constant; study: AdamW 1e-4, wd 1e-3, smoothing 0.1, 5 warm-up "
                            "epochs, cosine; improved (measured, see README): AdamW 5e-3, wd 0.05, smoothing 0.1, "
                            "1 warm-up epoch, cosine, grad clip 1; vit-small-data: the literature's for small ViTs "
                            "(DeiT's: AdamW 1e-3, wd 0.05, batch 128, 10%% warm-up, cosine, smoothing 0.1, "
                            "stochastic depth 0.1, AutoAugment, MixUp/CutMix, random erasing 0.25, repeated aug 3)")
    optim.add_argument("--epochs", type=int, default=10, help="epochs to train (more with --resume extends a run)")
    optim.add_argument("--optimizer", choices=("adam", "adamw"), help="adam: L2 weight decay; adamw: decoupled")
    optim.add_argument("--lr", type=float, help="peak learning rate")
    optim.add_argument("--weight-decay", type=float, help="not applied to biases and LayerNorm weights")
    optim.add_argument("--lr-schedule", choices=("constant", "cosine"), help="set every step")
    optim.add_argument("--warmup-epochs", type=epochs_or_percent,
                       help="linear warm-up from --min-lr (may be fractional, or P%% of --epochs)")
    optim.add_argument("--min-lr", type=float, help="where the warm-up starts and the cosine ends")
    optim.add_argument("--label-smoothing", type=float, help="of the training loss (val and test losses are plain)")
    optim.add_argument("--grad-clip", type=float, help="max gradient norm; 0: off")
    optim.add_argument("--ema-decay", type=float, help="EMA of the weights, evaluated and saved; 0: off")
    optim.add_argument("--seed", type=int, default=0, help="model init, dropout, shuffling and augmentation")
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
    optim.set_defaults(**PRESETS["seed"])
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
    system.add_argument("--log-every", type=int, default=20,
                        help="steps between progress updates and loss checks (a CPU-GPU sync)")
    return parser


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
    args.warmup_spec, args.warmup_note, args.earlier_data = args.warmup_epochs, None, []
    if not args.resume:  # (on --resume, once the run's own epochs are known)
        args.warmup_epochs, args.warmup_note = warmup_epochs(args.warmup_spec, args.epochs)
        if args.warmup_note and "warmup_epochs" in given:
            parser.error(f"--warmup-epochs {args.warmup_spec} does not end before the run does (--epochs {args.epochs}): "
                         "give a shorter warm-up")
    # what the recipe set, as this run's epochs resolve it (kept on --resume): compare.py labels a
    # run by how it differs from its recipe, from its own record
    args.recipe_defaults = {key: parser.get_default(key) for key in ("batch_size", *RECIPE_FLAGS)}
    args.recipe_defaults["warmup_epochs"] = warmup_epochs(args.recipe_defaults["warmup_epochs"], args.epochs)[0]
    if args.allow_other_data and not args.resume:
        parser.error("--allow-other-data goes with --resume")
    check_augmentation(parser, args, given)
    for flag in ("epochs", "batch_size", "eval_batch_size", "log_every"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    for flag in ("lr",):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    for flag in ("weight_decay", "grad_clip") + (() if args.resume else ("warmup_epochs",)):
        if not 0 <= getattr(args, flag) < math.inf:
            parser.error(f"--{flag.replace('_', '-')} must be non-negative, got {getattr(args, flag)}")
    for flag in ("label_smoothing", "ema_decay"):
        if not 0 <= getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be in [0, 1), got {getattr(args, flag)}")
    if not 0 <= args.min_lr <= args.lr:
        parser.error(f"--min-lr must be in [0, --lr={args.lr}], got {args.min_lr}")
    if not args.resume:  # (a resumed run's model is the checkpoint's, checked against it)
        try:
            with torch.device("meta"):  # every check the model makes, at no cost
                build_model(args.model, 1, **model_settings(args))
        except ValueError as error:
            parser.error(str(error))
    return args


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


# ---------------------------------------------------------------- pieces of the loop


def new_totals(device):
    """Running sums of one epoch's training metrics, kept on the device."""
    zero = torch.zeros((), device=device)
    return {"loss_sum": zero, "correct": torch.zeros(2, device=device), "count": 0, "skipped": zero.clone()}


def summarize(totals):
    count = max(totals["count"], 1)
    loss, (top1, top5) = (totals["loss_sum"] / count).item(), (totals["correct"] / count).tolist()
    return {"loss": loss, "top1": top1, "top5": top5, "images": totals["count"], "skipped_steps": int(totals["skipped"].item())}


def train_one_epoch(model, loader, updater, device, dtype, totals, start_step, log_every, bar, stop=None, dist=None):
    """Train on the loader's batches from start_step on, adding to totals; return the next step
    (len(loader) unless stop() asked to stop early: checked after each step, or under torchrun
    every log_every steps, where all ranks agree on it).

    Metrics accumulate on the device; they are read (a CPU-GPU sync) only every log_every steps.
    """
    dist = dist or Distributed()
    model.train()
    start = time.perf_counter()
    for step, (x, y) in enumerate(loader.iterate(start_step), start_step):
        with autocast(device, dtype):
            logits = model(x)
        loss = updater.loss(logits, y)
        skipped = updater.step(loss, loader.epoch * len(loader) + step)
        if skipped is not None:
            totals["skipped"] += skipped
        totals["loss_sum"] += loss.detach() * len(y)
        labels = y.argmax(1) if y.dim() == 2 else y  # MixUp/CutMix: the dominant label
        totals["correct"] += topk_correct(logits.detach().float(), labels)
        totals["count"] += len(y)
        stop_now = stop is not None and not dist.enabled and stop()
        if (step + 1) % log_every == 0 or step + 1 == len(loader):
            # The sync point; under torchrun also where the ranks agree on the loss and on stopping,
            # so that no rank leaves the others waiting in a collective.
            shared = torch.stack([totals["loss_sum"].float(), torch.tensor(float(totals["count"]), device=device),
                                  torch.tensor(float(stop is not None and stop()), device=device)])
            loss_sum, count, stop_votes = dist.all_reduce(shared).tolist()
            mean_loss = loss_sum / count
            stop_now = stop_now or stop_votes > 0
            if not math.isfinite(mean_loss):
                raise TrainingError(
                    f"the loss became {mean_loss} at step {step + 1} of epoch {loader.epoch + 1}; "
                    "try a lower --lr or --no-amp (the last good checkpoint is kept)"
                )
            images_per_s = (step + 1 - start_step) * len(y) * dist.world_size / (time.perf_counter() - start)
            bar.set_postfix_str(f"loss {mean_loss:.3f}, {images_per_s:.0f} img/s")
        bar.update(1)
        if stop_now:
            return step + 1
    return len(loader)


class StopSignal:
    """SIGINT (Ctrl-C) or SIGTERM asks the loop to stop after the current step; a second
    SIGINT stops at once (every file is written atomically, so nothing is left half-written)."""

    EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

    def __init__(self):
        self.received = None
        self.previous = {}

    def __enter__(self):
        for signum in self.EXIT_CODES:
            self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to quit at once)", file=sys.stderr)

    def __call__(self):
        return self.received is not None

    @property
    def exit_code(self):
        return self.EXIT_CODES.get(self.received, 0)


# ---------------------------------------------------------------- setup


def choose_run_dir(args):
    if args.run_dir:
        return args.run_dir
    if args.resume:
        return os.path.dirname(args.resume) or "."  # relative as given: printed paths stay short
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))


def prepare_run_dir(run_dir, resume_path):
    """Create the run directory; refuse one that already holds another run (a resumed run may
    continue in its own directory, or in a new one)."""
    holds_a_run = is_run(run_dir)
    own = resume_path and os.path.realpath(run_dir) == os.path.realpath(os.path.dirname(os.path.abspath(resume_path)))
    if holds_a_run and not own:
        if not os.path.exists(file_of(run_dir, LAST)):
            raise DataError(f"{run_dir} holds a run that stopped before its first checkpoint: delete the folder "
                            "or choose another --run-dir")
        raise DataError(f"{run_dir} already holds a run: continue it with `{resume_command(run_dir)}` "
                        "or choose another --run-dir")
    ensure_dir(run_dir, f"the run directory {run_dir}", ": choose another --run-dir")


def new_model(args, checkpoint, num_classes, dist, device):
    """The run's model, initialised from the current seed (on --resume, the checkpoint's model
    and config), with SyncBatchNorm under torchrun when asked."""
    if checkpoint is None:
        model = build_model(args.model, num_classes, **model_settings(args))
    else:
        try:
            model = build_model(args.model, config=MODELS[args.model].config(**checkpoint["model_config"]))
        except (TypeError, ValueError) as error:
            raise DataError(f"cannot resume {args.resume}: its model configuration does not build here ({error})") from None
    if args.sync_bn and dist.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device)


def has_batchnorm(model):
    return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules())


def load_on_every_rank(path, dist):
    """The checkpoint to resume from. Under torchrun every process reads it: a rank that cannot
    (a machine without the file, a damaged copy) stops every rank with one message saying which,
    instead of leaving the others waiting at the next collective."""
    if not dist.enabled:
        return load_checkpoint(path)
    checkpoint, problem = None, None
    try:
        checkpoint = load_checkpoint(path)
    except DataError as error:
        problem = f"rank {dist.rank} on {socket.gethostname()}: {error}"
    problems = [problem for problem in dist.all_gather(problem) if problem]
    if problems:
        raise DataError(f"--resume {path}: {'; '.join(problems)}. Under torchrun every process reads the checkpoint, "
                        "so every machine needs it at this path (copy it there, or use a shared filesystem)")
    return checkpoint


def restore(checkpoint, model, updater, path, dist):
    """Load a run's state for --resume (the model is already the checkpoint's, the data checked
    to be the run's: resume.check_same_data)."""
    model.load_state_dict(checkpoint["model"])
    # The kernel choice is this machine's, not the saved run's. It is set before loading, because
    # loading puts the step counts beside the parameters only for fused or capturable groups.
    kernels = {key: updater.optimizer.defaults[key] for key in ("fused", "foreach", "capturable") if key in updater.optimizer.defaults}
    saved = checkpoint["optimizer"]
    try:
        updater.optimizer.load_state_dict({**saved, "param_groups": [{**group, **kernels} for group in saved["param_groups"]]})
    except ValueError as error:  # e.g. a checkpoint from before weight decay had its own parameter group
        raise DataError(f"cannot resume {path}: its optimizer state does not fit this version ({error})") from None
    if checkpoint["scaler"] or not updater.scaler.is_enabled():
        updater.scaler.load_state_dict(checkpoint["scaler"])  # (a disabled scaler ignores it)
    # else: fp16 now, and the run was not fp16 before: a fresh GradScaler calibrates its own scale
    if updater.ema is not None:
        if "ema" not in checkpoint:
            raise DataError(f"cannot resume {path}: it has no EMA weights to continue")
        updater.ema.load_state_dict(checkpoint["ema"])
    restore_rng_states(checkpoint["rng"], dist.rank)
    progress = checkpoint["progress"]
    if progress["partial"] and not dist.is_main:
        progress = {**progress, "partial": None}  # partial sums are over all ranks: rank 0 carries them
    return progress


def resolved_config(args, model, data, device, dtype, run_dir, dist):
    """The run's settings as plain values: the flags (the model's settings as its whole config),
    what was resolved from the machine, and which data it trains on (compare.py never groups
    runs on different data)."""
    config = {key: value for key, value in vars(args).items() if key not in NOT_RECORDED and key not in SETTINGS}
    changed = describe_settings(changed_settings(model.model_name, asdict(model.config)))
    config.update(model_config=asdict(model.config), model_description=f"{model.model_name} ({changed})" if changed else model.model_name,
                  device=str(device),
                  amp_dtype=str(dtype).replace("torch.", "") if dtype else None, run_dir=run_dir, world_size=dist.world_size,
                  data=data_identity(data.meta), peak_memory_what=peak_memory(device)[1])
    return config


def on_main(dist, action):
    """Run action on rank 0 only and return its result on every rank; a DataError there is
    raised on every rank (none is left waiting)."""
    result, error = None, None
    if dist.is_main:
        try:
            result = action()
        except DataError as raised:
            error = str(raised)
    result, error = dist.all_gather((result, error))[0]
    if error:
        raise DataError(error)
    return result


def print_epoch(epoch, epochs, train, val, row, improved, mixed=False):
    skipped = f", {train['skipped_steps']} fp16 steps skipped by the GradScaler" if train["skipped_steps"] else ""
    print(f"epoch {epoch + 1}/{epochs}: train loss {train['loss']:.4f} top-1{' (dominant label)' if mixed else ''} {train['top1']:.2%} | "
          f"val loss {val['loss']:.4f} top-1 {val['top1']:.2%} top-5 {val['top5']:.2%} | "
          f"{row['seconds']:.0f} s, {row['images_per_s']:.0f} img/s{skipped}{'  *best*' if improved else ''}")


# ---------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(argv)
    dist = Distributed()
    try:
        dist, device = setup_distributed(args.device)
        with StopSignal() as stop:
            run(args, stop, dist, device)
        # Free DDP's reducer (kept alive by reference cycles) while the process group still
        # exists, and let every rank finish, before the group goes away: otherwise Gloo's
        # threads can abort the process at exit.
        gc.collect()
        dist.barrier()
        cleanup_distributed(dist)
    except NothingToDo as nothing:
        print(nothing)
        cleanup_distributed(dist)
        return 0
    except (DataError, TrainingError) as error:  # raised on every rank alike: the group can go
        print(f"error: {error}", file=sys.stderr)
        cleanup_distributed(dist)
        return 2 if isinstance(error, DataError) else 1
    except KeyboardInterrupt:
        print("\nstopped at once; the last checkpoint written (if any) is intact", file=sys.stderr)
        return 130
    return stop.exit_code


@dataclass
class Run:
    """What a training run carries from epoch to epoch."""

    args: argparse.Namespace
    dist: Distributed
    device: torch.device
    dtype: torch.dtype  # autocast dtype for training, None for fp32
    data: object  # data.PackedData
    splits: dict
    run_dir: str
    model: torch.nn.Module  # the plain model (from model.build_model): what checkpoints hold
    trained: torch.nn.Module  # what the steps call: the model, maybe wrapped in DDP and compiled
    evaluated: torch.nn.Module  # what validation and test evaluate: the EMA weights when on, else `trained`
    updater: Updater  # optimizer, GradScaler, lr schedule, clipping, EMA
    train_loader: BatchLoader
    val_loader: BatchLoader
    progress: dict
    config: dict
    best_weights: dict = None  # a CPU copy of the evaluated weights of the best epoch, on every rank

    def log(self, *args, **kwargs):
        if self.dist.is_main:  # only rank 0 talks and writes
            print(*args, **kwargs)

    def save(self, name):
        rng = rng_states(self.device, self.dist)  # a collective: every rank takes part
        payload = (self.model, self.data, self.updater, self.progress, self.config, rng)
        on_main(self.dist, lambda: save_checkpoint(checkpoint_payload(*payload), os.path.join(self.run_dir, name)))


def run(args, stop, dist, device):
    r = start_run(args, dist, device)
    with RunStatus(r.run_dir, enabled=dist.is_main) as status:
        for epoch in range(r.progress["epoch"], args.epochs):
            finished_epoch = run_epoch(r, epoch, stop)
            if not finished_epoch or dist.all_reduce(torch.tensor(float(stop()), device=device)).item():
                where = f"at step {r.progress['step_in_epoch']} of epoch {epoch + 1}" if not finished_epoch else f"after epoch {epoch + 1}"
                status.set("interrupted", f"stopped {where}")
                r.log(f"stopped {where}; continue with: {resume_command(r.run_dir)}", file=sys.stderr)
                return None
        if dist.enabled:
            check_ranks_agree(r.model, dist, r.log)
        test_metrics = evaluate_test(r)
        on_main(dist, lambda: write_test_metrics(r.run_dir, test_metrics))
        status.set("finished")
    if dist.is_main:
        draw_curves_or_explain(r.run_dir)
    best = os.path.join(r.run_dir, "best.pt")
    evaluate_again = shell_command("evaluate.py", best if os.path.exists(best) else os.path.join(r.run_dir, "last.pt"))
    r.log(f"run saved in {r.run_dir}/ (evaluate again: {evaluate_again})")
    return test_metrics


def start_run(args, dist, device):
    """Data, run directory, model, optimizer and (with --resume) the saved state."""
    if args.sync_bn and device.type != "cuda":
        raise DataError("--sync-bn needs CUDA: SyncBatchNorm runs on GPUs only")
    checkpoint = load_on_every_rank(args.resume, dist) if args.resume else None
    if checkpoint is not None:
        check_resumable(checkpoint, args.resume)
        adopt_saved_settings(args, checkpoint, args.resume)
        keep_saved_precision(args, checkpoint, device)
    args.amp = default_amp(device) if args.amp is None else args.amp
    args.compile = device.type == "cuda" if args.compile is None else args.compile
    dtype = amp_dtype(device, args.amp, args.amp_dtype)
    configure_backends(device)
    data = load_packed(args.data_dir)
    if checkpoint is not None:
        check_same_data(args, checkpoint, data, args.resume)
    if data.synthetic and dist.is_main:
        print("warning: SYNTHETIC data (prepare_data.py --synthetic): a smoke test, not a result", file=sys.stderr)
    splits = make_splits(data)
    if len(splits["train"][1]) < args.batch_size:
        raise DataError(f"--batch-size {args.batch_size} is larger than the training set ({len(splits['train'][1])} images)")
    run_dir = dist.all_gather(choose_run_dir(args))[0]  # rank 0's clock names the run
    on_main(dist, lambda: prepare_run_dir(run_dir, args.resume))

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = new_model(args, checkpoint, len(data.classes), dist, device)
    if dist.enabled:
        torch.manual_seed(args.seed * 1_000_003 + dist.rank)  # but different dropout on each rank
    shard = {"rank": dist.rank, "world_size": dist.world_size}
    train_loader = BatchLoader(*splits["train"], args.batch_size, device, train=True, seed=args.seed, **shard,
                               augmentation=augmentation_of(args), num_classes=len(data.classes))
    val_loader = BatchLoader(*splits["val"], args.eval_batch_size, device, **shard)
    updater = Updater(
        optimizer=build_optimizer(model, args.optimizer, args.lr, args.weight_decay, device),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        schedule=LRSchedule.from_args(args, len(train_loader)),
        label_smoothing=args.label_smoothing, grad_clip=args.grad_clip,
        ema=EMA(model, args.ema_decay) if args.ema_decay else None,
    )
    progress = {
        "epoch": 0, "step": 0, "best_val_top1": -1.0, "best_val_loss": math.inf, "best_epoch": 0, "history": [],
        "step_in_epoch": 0, "partial": None,  # set when a run is interrupted mid-epoch
    }
    if checkpoint is not None:
        progress = restore(checkpoint, model, updater, args.resume, dist)
    trained = model
    if dist.enabled:
        # Wrap first, then compile the wrapper: what the PyTorch DDP + torch.compile docs recommend
        # (TorchDynamo's DDPOptimizer splits the graph at DDP's gradient buckets).
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    trained = maybe_compile(trained, args.compile, args.compile_mode)
    evaluated = maybe_compile(updater.ema.module, args.compile, args.compile_mode) if updater.ema else trained
    config = resolved_config(args, model, data, device, dtype, run_dir, dist)
    on_main(dist, lambda: write_config(run_dir, config))
    r = Run(args, dist, device, dtype, data, splits, run_dir, model, trained, evaluated, updater,
            train_loader, val_loader, progress, config)
    if checkpoint is not None:
        where = (f"at step {progress['step_in_epoch']} of epoch {progress['epoch'] + 1}" if progress["step_in_epoch"]
                 else f"after epoch {progress['epoch']}")  # numbered as the stop message numbered it
        r.log(f"resuming {args.resume} {where}")
        bring_best_checkpoint(r, args.resume)
        saved_schedule = checkpoint.get("schedule")
        if saved_schedule and saved_schedule != asdict(updater.schedule):
            step = progress["step"]
            r.log(f"note: the lr schedule now spans {args.epochs} epochs (it was {saved_schedule['total_steps'] // len(train_loader)}): "
                  f"the lr at step {step} goes from {LRSchedule(**saved_schedule)(step):.3g} to {updater.schedule(step):.3g}")
    r.log(f"training on {device}{f' x {dist.world_size} processes' if dist.enabled else ''} "
          f"({config['amp_dtype'] or 'fp32'}{', compiled' if args.compile else ''}): "
          f"{len(splits['train'][1]):,} train / {len(splits['val'][1]):,} val images, "
          f"{len(data.classes)} classes, {args.epochs} epoch{'s' if args.epochs != 1 else ''} -> {run_dir}")
    r.log(f"model {args.model}: {count_parameters(model):,} parameters; recipe {args.recipe}: {describe_recipe(args)}")
    if args.warmup_note:
        r.log(f"note: {args.warmup_note}")
    if dist.enabled and has_batchnorm(model) and not args.sync_bn:
        r.log(f"note: {args.model} has BatchNorm: each of the {dist.world_size} processes normalises its own share of "
              "the batch, so this is not exactly one process's training (--sync-bn on CUDA makes it so)")
    return r


def bring_best_checkpoint(r, resume_path):
    """A run resumed into another --run-dir brings its best.pt along (the test of the best
    weights and the printed evaluate command need it there): the resumed checkpoint itself when
    it is the best, else the best.pt beside it; when there is none, the best is tracked afresh.
    Rank 0 decides (only it reads the files) and every rank follows."""
    progress, best = r.progress, os.path.join(r.run_dir, "best.pt")
    beside = os.path.join(os.path.dirname(os.path.abspath(resume_path)), "best.pt")
    choice, saved = None, None
    if r.dist.is_main and progress["best_epoch"] and not os.path.exists(best):
        if progress["best_epoch"] == progress["epoch"] and not progress["step_in_epoch"]:
            choice = "this"
        else:
            try:
                saved = load_checkpoint(beside) if os.path.exists(beside) else None
            except DataError:  # a damaged best.pt is no best.pt
                saved = None
            choice = "beside" if saved and saved.get("progress", {}).get("epoch") == progress["best_epoch"] else "none"
    choice = r.dist.all_gather(choice)[0]
    if choice == "this":
        r.save("best.pt")
    elif choice == "beside":
        on_main(r.dist, lambda: save_checkpoint(saved, best))
    elif choice == "none":
        r.log(f"note: no best.pt of epoch {progress['best_epoch']} beside {resume_path}: "
              "best.pt will be the best of the epochs still to come")
        progress.update(best_val_top1=-1.0, best_val_loss=math.inf, best_epoch=0)


def describe_recipe(args):
    parts = [f"{args.optimizer} lr {args.lr:g}", f"weight decay {args.weight_decay:g}"]
    if args.warmup_epochs:
        parts.append(f"{args.warmup_epochs:g} warm-up epoch{'' if args.warmup_epochs == 1 else 's'} from {args.min_lr:g}")
    parts.append("constant lr" if args.lr_schedule == "constant" else f"cosine to {args.min_lr:g}")
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
    return ", ".join(parts)


def run_epoch(r, epoch, stop):
    """Train one epoch (or its rest, after a mid-epoch resume), validate, record and save.
    Returns False when a stop request interrupted it (an exact checkpoint is saved)."""
    args, progress, train_loader = r.args, r.progress, r.train_loader
    train_loader.set_epoch(epoch)
    start_step, totals, seconds_before = resume_point(progress, r.device)
    start = time.perf_counter()
    with progress_bar(len(train_loader), f"epoch {epoch + 1}/{args.epochs}", "steps", initial=start_step, leave=False,
                  disable=not r.dist.is_main) as bar:
        next_step = train_one_epoch(r.trained, train_loader, r.updater, r.device, r.dtype, totals,
                                    start_step, args.log_every, bar, stop, r.dist)
    seconds = seconds_before + time.perf_counter() - start
    progress["step"] += next_step - start_step
    totals = sum_over_ranks(totals, r.dist)
    if next_step < len(train_loader):
        progress.update(step_in_epoch=next_step, partial={**plain_totals(totals), "seconds": seconds})
        r.save("last.pt")
        return False
    progress.update(step_in_epoch=0, partial=None)
    train = summarize(totals)
    pad_to = args.eval_batch_size if args.compile else None
    if r.updater.ema is not None:  # each rank's EMA averaged its own BatchNorm statistics: evaluate (and save) rank 0's
        r.dist.broadcast_buffers(r.updater.ema.module)
    val = evaluate(r.evaluated, r.val_loader, r.device, None, pad_to, r.dist)  # always fp32: metrics independent of --amp
    row = {
        "epoch": epoch + 1, **{f"train_{k}": train[k] for k in ("loss", "top1", "top5")},
        **{f"val_{k}": val[k] for k in ("loss", "top1", "top5")},
        "lr": r.updater.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 2),
        "images_per_s": round(train["images"] / seconds, 1), "skipped_steps": train["skipped_steps"],
        "peak_memory_mb": round(peak_memory(r.device)[0], 1),  # rank 0's, since this process started
    }
    progress["history"].append(row)
    progress["epoch"] = epoch + 1
    # best.pt: highest val top-1; on a tie (common with a small val split) the lower val loss
    improved = (val["top1"], -val["loss"]) > (progress["best_val_top1"], -progress.get("best_val_loss", math.inf))
    if improved:
        progress.update(best_val_top1=val["top1"], best_val_loss=val["loss"], best_epoch=epoch + 1)
    on_main(r.dist, lambda: write_metrics(r.run_dir, progress["history"], r.train_loader.augmentation.mixing.enabled))
    if improved:  # best.pt first: a kill between the two never leaves a best.pt older than last.pt says
        # Every rank keeps them: the final test needs no best.pt, which only rank 0's disk holds.
        r.best_weights = {key: value.detach().to("cpu", copy=True) for key, value in evaluated_module(r).state_dict().items()}
        r.save("best.pt")
    r.save("last.pt")
    if r.dist.is_main:
        print_epoch(epoch, args.epochs, train, val, row, improved, r.train_loader.augmentation.mixing.enabled)
    return True


def sum_over_ranks(totals, dist):
    """The epoch's metric totals over all ranks (the totals themselves on one process)."""
    if not dist.enabled:
        return totals
    sums = torch.stack([totals["loss_sum"].double(), totals["skipped"].double(), *totals["correct"].double(),
                        torch.tensor(float(totals["count"]), device=totals["loss_sum"].device, dtype=torch.float64)])
    loss_sum, skipped, top1, top5, count = dist.all_reduce(sums).tolist()
    device = totals["loss_sum"].device
    return {"loss_sum": torch.tensor(loss_sum, device=device), "skipped": torch.tensor(skipped, device=device),
            "correct": torch.tensor([top1, top5], device=device), "count": int(count)}


def check_ranks_agree(model, dist, log):
    """DDP keeps every rank's weights equal; check it once at the end (a cheap checksum per tensor)."""
    checksums = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    if any(not torch.equal(checksums, other) for other in dist.all_gather(checksums)):
        raise TrainingError("the ranks' parameters differ after training: the distributed setup is broken")
    log(f"parameters identical on all {dist.world_size} ranks")


def resume_point(progress, device):
    """(first step, metric totals, seconds already spent) for the epoch about to run."""
    partial = progress["partial"]
    if not partial:
        return 0, new_totals(device), 0.0
    totals = {
        "loss_sum": torch.tensor(partial["loss_sum"], device=device),
        "correct": torch.tensor(partial["correct"], device=device),
        "count": partial["count"],
        "skipped": torch.tensor(partial["skipped"], device=device),
    }
    return progress["step_in_epoch"], totals, partial["seconds"]


def plain_totals(totals):
    """Totals as plain numbers for the checkpoint (float32 values survive the round trip exactly)."""
    return {"loss_sum": totals["loss_sum"].item(), "correct": totals["correct"].tolist(), "count": totals["count"],
            "skipped": totals["skipped"].item()}


def evaluated_module(r):
    """The plain module that validation evaluates: the EMA's when on, else the model."""
    return r.updater.ema.module if r.updater.ema else r.model


def best_weights(r):
    """The best epoch's weights on every rank: kept in memory since that epoch, or, in a resumed
    run whose best epoch came before, read from best.pt by rank 0 and sent to the others (under
    torchrun on several machines, only rank 0's disk has best.pt)."""
    if r.best_weights is not None:
        return r.best_weights
    return on_main(r.dist, lambda: model_from_checkpoint(load_checkpoint(os.path.join(r.run_dir, "best.pt"))).state_dict())


def evaluate_test(r):
    """The test split, once, with the final weights (the notebook's trainer.test) and with
    best.pt when the best epoch was not the last."""
    args, progress, dist = r.args, r.progress, r.dist
    loader = BatchLoader(*r.splits["test"], args.eval_batch_size, r.device, rank=dist.rank, world_size=dist.world_size)
    pad_to = args.eval_batch_size if args.compile else None

    def test(model, epoch, pad_to=None):
        metrics, _ = evaluate_with_report(model, loader, r.device, r.data, None, pad_to, dist)
        return {**metrics, "epoch": epoch}

    results = {"final": test(r.evaluated, progress["epoch"], pad_to)}
    if progress["best_epoch"] not in (0, progress["epoch"]):
        best = copy.deepcopy(evaluated_module(r))
        best.load_state_dict(best_weights(r))
        results["best"] = test(best, progress["best_epoch"])
    else:
        results["best"] = results["final"]
    names = ("final", "best") if results["best"] is not results["final"] else ("final",)
    for name in names:
        metrics = results[name]
        weights = f"{name} EMA" if r.updater.ema else name
        r.log(f"test ({weights} weights, epoch {metrics['epoch']}): loss {metrics['loss']:.4f} "
              f"top-1 {metrics['top1']:.2%} top-5 {metrics['top5']:.2%} macro-F1 {metrics['macro_f1']:.4f} ({metrics['images']:,} images)")
    return results


if __name__ == "__main__":
    sys.exit(main())
