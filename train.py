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
import functools
import gc
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from cli import StopSignal, progress_bar, resume_command, shell_command
from budget import fit_to_budget, probe_batches
from curves import draw_curves_or_explain
from data import BatchLoader, ResolutionSchedule, image_sample, load_packed, make_splits
from checkpoint import checkpoint_payload, load_checkpoint, model_from_checkpoint, rng_states, save_checkpoint
from train_flags import augmentation_of, model_settings, parse_args, resolve_length
from evaluation import evaluate, evaluate_with_report, peak_memory, topk_correct, with_tta
from totals import epoch_line, new_totals, plain_totals, resume_point, summarize
from errors import DataError, TrainingError
from layout import data_identity
from loggers import Loggers, announce_resume, announce_run, check_installed, new_wandb_id
from lr_find import find_lr, lr_at
from model import MODELS, SETTINGS, build_model, changed_settings, describe_settings
from recipe import EMA, LRSchedule, Updater, build_optimizer, total_steps
from resume import (
    NothingToDo,
    adopt_saved_settings,
    bring_best_checkpoint,
    check_resumable,
    check_same_data,
    keep_saved_precision,
    load_on_every_rank,
    restore,
)
from rundir import (RunStatus, choose_run_dir, epoch_checkpoint, prepare_run_dir, remove_epoch_checkpoints, top_epochs,
                    write_config, write_metrics, write_test_metrics)
from runtime import (
    Distributed,
    amp_dtype,
    check_ranks_agree,
    cleanup_distributed,
    configure_backends,
    default_amp,
    maybe_compile,
    on_main,
    setup_distributed,
    sum_over_ranks,
)

NOT_RECORDED = ("given", "notes", "lr_find", "lr_find_steps")  # which flags were given, notes printed once; --lr-find trains no run


# ---------------------------------------------------------------- pieces of the loop


def train_one_epoch(model, loader, updater, device, dtype, totals, start_step, log_every, bar, stop=None, dist=None,
                    end_step=None, on_log=None):
    """Train on the loader's batches from start_step to end_step (len(loader) but in a --steps
    run's last epoch), adding to totals; return the next step (end_step unless stop() asked to
    stop early: checked after each step, or under torchrun every log_every steps, where all ranks
    agree on it).

    Metrics accumulate on the device; they are read (a CPU-GPU sync) only every log_every steps,
    and handed to on_log(optimizer step, mean loss since the last call, images/s) when given.
    """
    dist, end_step = dist or Distributed(), end_step or len(loader)
    model.train()
    start = time.perf_counter()
    # (loss sum, count) at the last on_log; resumed mid-epoch, the totals restored (rank 0's: all
    # ranks' sums, as the sync point's all-reduce gives them), read once
    logged = (float(totals["loss_sum"]), float(totals["count"])) if on_log is not None and start_step else (0.0, 0.0)
    for step, (x, y) in enumerate(loader.iterate(start_step), start_step):
        logits, loss, skipped = updater.train_step(model, x, y, loader.epoch * len(loader) + step, device, dtype)
        if skipped is not None:
            totals["skipped"] += skipped
        totals["loss_sum"] += loss.detach() * len(y)
        labels = y.argmax(1) if y.dim() == 2 else y  # MixUp/CutMix: the dominant label
        totals["correct"] += topk_correct(logits.detach().float(), labels)
        totals["count"] += len(y)
        stop_now = stop is not None and not dist.enabled and stop()
        if (step + 1) % log_every == 0 or step + 1 == end_step:
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
            if on_log is not None:
                on_log(loader.epoch * len(loader) + step + 1, (loss_sum - logged[0]) / (count - logged[1]), images_per_s)
                logged = (loss_sum, count)
        bar.update(1)
        if stop_now or step + 1 == end_step:
            return step + 1
    return end_step


# ---------------------------------------------------------------- setup


def new_model(args, checkpoint, num_classes, dist, device, train_images):
    """The run's model, initialised from the current seed (and from the training images with
    --whiten-init; on --resume, the checkpoint's model and config), with SyncBatchNorm under
    torchrun when asked."""
    if checkpoint is None:
        model = build_model(args.model, num_classes, **model_settings(args))
        if getattr(model.config, "whiten_init", False):
            model.whiten_stem(image_sample(train_images, 1000, ResolutionSchedule.first_side(args.low_res), args.seed))
    else:
        try:
            model = build_model(args.model, config=MODELS[args.model].config(**checkpoint["model_config"]))
        except (TypeError, ValueError) as error:
            raise DataError(f"cannot resume {args.resume}: its model configuration does not build here ({error})") from None
    if args.sync_bn and dist.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device)


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


# ---------------------------------------------------------------- main


def main(argv=None):
    started = time.monotonic()  # --time-budget counts from here
    args = parse_args(argv)
    dist = Distributed()
    try:
        dist, device = setup_distributed(args.device)
        with StopSignal() as stop:
            run(args, stop, dist, device, started)
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
    loggers: Loggers = None  # --logger's (loggers.py): empty without it, and on every rank but 0
    best_weights: dict = None  # a CPU copy of the evaluated weights of the best epoch, on every rank
    started: float = 0.0  # time.monotonic() when train.py started
    minutes_before: float = 0.0  # wall minutes of the earlier processes of a resumed run, to their last epoch

    def log(self, *args, **kwargs):
        if self.dist.is_main:  # only rank 0 talks and writes
            print(*args, **kwargs)

    def save(self, name):
        rng = rng_states(self.device, self.dist)  # a collective: every rank takes part
        payload = (self.model, self.data, self.updater, self.progress, self.config, rng)
        on_main(self.dist, lambda: save_checkpoint(checkpoint_payload(*payload), os.path.join(self.run_dir, name)))


def run(args, stop, dist, device, started):
    if args.lr_find:
        return range_test(args, stop, dist, device)
    r = start_run(args, dist, device, started)
    resumed_at_step = r.progress["step"] if args.resume else None
    with RunStatus(r.run_dir, enabled=dist.is_main) as status, \
            Loggers(args.logger, r.run_dir, r.config, resumed_at_step, enabled=dist.is_main) as r.loggers:
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
        r.loggers.finish(test_metrics, r.progress["step"])
        status.set("finished")
    if args.time_budget:
        resumed = " (with the earlier processes' minutes to their last finished epoch)" if args.resume else ""
        r.log(f"{test_metrics['final']['elapsed_minutes']:.1f} min from the start of train.py to the end of its test, "
              f"for a --time-budget of {args.time_budget:g} min{resumed}")
    if dist.is_main:
        draw_curves_or_explain(r.run_dir)
    best = os.path.join(r.run_dir, "best.pt")
    evaluate_again = shell_command("evaluate.py", best if os.path.exists(best) else os.path.join(r.run_dir, "last.pt"))
    r.log(f"run saved in {r.run_dir}/ (evaluate again: {evaluate_again})")
    return test_metrics


def start_run(args, dist, device, started):
    """Data, run directory, model, optimizer and (with --resume) the saved state."""
    if args.sync_bn and device.type != "cuda":
        raise DataError("--sync-bn needs CUDA: SyncBatchNorm runs on GPUs only")
    checkpoint = load_on_every_rank(args.resume, dist) if args.resume else None
    dtype = settle_settings(args, checkpoint, device)
    check_installed(args.logger)  # (after --resume adopted the run's loggers)
    data, splits = load_data(args, checkpoint, dist)
    run_dir = dist.all_gather(choose_run_dir(args))[0]  # rank 0's clock names the run
    on_main(dist, lambda: prepare_run_dir(run_dir, args.resume))

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = new_model(args, checkpoint, len(data.classes), dist, device, splits["train"][0])
    if dist.enabled:
        torch.manual_seed(args.seed * 1_000_003 + dist.rank)  # but different dropout on each rank
    train_loader = new_train_loader(args, data, splits, device, dist)
    val_loader = BatchLoader(*splits["val"], args.eval_batch_size, device, rank=dist.rank, world_size=dist.world_size)
    if args.time_budget and checkpoint is None:
        fit_to_budget(args, model, lambda probe_args, probe: new_updater(probe_args, probe, dtype, device, len(train_loader)),
                      train_loader, splits, device, dtype, dist, started)
    resolve_length(args, len(train_loader))
    steps = total_steps(args, len(train_loader))
    train_loader.resolution = ResolutionSchedule(ResolutionSchedule.parse(args.low_res), steps)
    updater = new_updater(args, model, dtype, device, len(train_loader))
    progress = restore(checkpoint, model, updater, args.resume, dist) if checkpoint is not None else new_progress()
    trained, evaluated = compiled_for_training(model, updater, args, dist, device)
    if "wandb" in args.logger and not args.wandb_id:  # rank 0's, so that every rank records the same
        args.wandb_id = dist.all_gather(new_wandb_id())[0]
    config = resolved_config(args, model, data, device, dtype, run_dir, dist)
    on_main(dist, lambda: write_config(run_dir, config))
    r = Run(args, dist, device, dtype, data, splits, run_dir, model, trained, evaluated, updater, train_loader, val_loader,
            progress, config, started=started, minutes_before=(progress["history"] or [{}])[-1].get("elapsed_minutes", 0.0))
    if checkpoint is not None:
        announce_resume(r, checkpoint)
        bring_best_checkpoint(r, args.resume)
    announce_run(r)
    return r


def range_test(args, stop, dist, device):
    """--lr-find: lr_find.py's sweep on a fresh model with the run's data, batch and recipe (its
    lr schedule replaced by the sweep's), at the side the run would start at."""
    if dist.enabled:
        raise DataError("--lr-find runs in one process: run it without torchrun")
    dtype = settle_settings(args, None, device)
    data, splits = load_data(args, None, dist)
    torch.manual_seed(args.seed)
    model = new_model(args, None, len(data.classes), dist, device, splits["train"][0])
    loader = new_train_loader(args, data, splits, device, dist)
    side = ResolutionSchedule.first_side(args.low_res)
    loader.resolution = ResolutionSchedule(((side, 1.0),), 2**62) if args.low_res else None
    updater = new_updater(args, model, dtype, device, len(loader))
    updater.schedule = functools.partial(lr_at, steps=args.lr_find_steps)
    print(f"lr range test on {device}: {args.model}, recipe {args.recipe}, batch {args.batch_size * args.grad_accum}"
          + "".join(f"\nnote: {note}" for note in args.notes), flush=True)
    return find_lr(maybe_compile(model, args.compile, args.compile_mode), updater, probe_batches(loader),
                   args.lr_find_steps, device, dtype, choose_run_dir(args), stop)


def settle_settings(args, checkpoint, device):
    """The run's own settings on --resume, then the machine's defaults for precision and
    compilation; returns the autocast dtype (None: fp32)."""
    if checkpoint is not None:
        check_resumable(checkpoint, args.resume)
        adopt_saved_settings(args, checkpoint, args.resume)
        keep_saved_precision(args, checkpoint, device)
    args.amp = default_amp(device) if args.amp is None else args.amp
    args.compile = device.type == "cuda" if args.compile is None else args.compile
    configure_backends(device)
    return amp_dtype(device, args.amp, args.amp_dtype)


def load_data(args, checkpoint, dist):
    """The prepared data (on --resume, checked to be the run's) and the notebook's splits."""
    data = load_packed(args.data_dir)
    if checkpoint is not None:
        check_same_data(args, checkpoint, data, args.resume)
    if data.synthetic and dist.is_main:
        print("warning: SYNTHETIC data (prepare_data.py --synthetic): a smoke test, not a result", file=sys.stderr)
    splits = make_splits(data)
    if args.batch_size % dist.world_size:  # (with --grad-accum each chunk is a global batch too)
        raise DataError(f"--batch-size {args.batch_size} (the global batch) is not divisible by the {dist.world_size} processes")
    if len(splits["train"][1]) < args.batch_size * args.grad_accum:
        batch = f"--batch-size {args.batch_size}" + (f" x --grad-accum {args.grad_accum}" if args.grad_accum > 1 else "")
        raise DataError(f"{batch} is larger than the training set ({len(splits['train'][1])} images)")
    return data, splits


def new_train_loader(args, data, splits, device, dist):
    """The training batches: N x --batch-size images under --grad-accum N, this rank's share of them."""
    return BatchLoader(*splits["train"], args.batch_size * args.grad_accum, device, train=True, seed=args.seed,
                       rank=dist.rank, world_size=dist.world_size, augmentation=augmentation_of(args),
                       num_classes=len(data.classes))


def new_updater(args, model, dtype, device, steps_per_epoch):
    return Updater(
        optimizer=build_optimizer(model, args.optimizer, args.lr, args.weight_decay, device),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        schedule=LRSchedule.from_args(args, steps_per_epoch),
        label_smoothing=args.label_smoothing, grad_clip=args.grad_clip,
        ema=EMA(model, args.ema_decay) if args.ema_decay else None, accumulate=args.grad_accum,
    )


def new_progress():
    return {
        "epoch": 0, "step": 0, "best_val_top1": -1.0, "best_val_loss": math.inf, "best_epoch": 0, "history": [],
        "step_in_epoch": 0, "partial": None,  # set when a run is interrupted mid-epoch
    }


def compiled_for_training(model, updater, args, dist, device):
    """(what the steps call, what validation evaluates): the model wrapped in DDP under torchrun,
    compiled when asked; the EMA's weights, compiled alike, when there is one."""
    trained = model
    if dist.enabled:
        # Wrap first, then compile the wrapper: what the PyTorch DDP + torch.compile docs recommend
        # (TorchDynamo's DDPOptimizer splits the graph at DDP's gradient buckets).
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    trained = maybe_compile(trained, args.compile, args.compile_mode)
    evaluated = maybe_compile(updater.ema.module, args.compile, args.compile_mode) if updater.ema else trained
    return trained, evaluated


def run_epoch(r, epoch, stop):
    """Train one epoch (or its rest, after a mid-epoch resume), validate, record and save.
    Returns False when a stop request interrupted it (an exact checkpoint is saved)."""
    args, progress, train_loader = r.args, r.progress, r.train_loader
    train_loader.set_epoch(epoch)
    start_step, totals, seconds_before = resume_point(progress, r.device)
    end_step = min(len(train_loader), total_steps(args, len(train_loader)) - epoch * len(train_loader))
    start = time.perf_counter()
    with progress_bar(end_step, f"epoch {epoch + 1}/{args.epochs}", "steps", initial=start_step, leave=False,
                      disable=not r.dist.is_main) as bar:
        next_step = train_one_epoch(r.trained, train_loader, r.updater, r.device, r.dtype, totals,
                                    start_step, args.log_every, bar, stop, r.dist, end_step, step_logger(r))
    seconds = seconds_before + time.perf_counter() - start
    progress["step"] += next_step - start_step
    totals = sum_over_ranks(totals, r.dist)
    if next_step < end_step:
        progress.update(step_in_epoch=next_step, partial={**plain_totals(totals), "seconds": seconds})
        r.save("last.pt")
        return False
    progress.update(step_in_epoch=0, partial=None)
    train = summarize(totals)
    pad_to = args.eval_batch_size if args.compile else None
    if r.updater.ema is not None:  # each rank's EMA averaged its own BatchNorm statistics: evaluate (and save) rank 0's
        r.dist.broadcast_buffers(r.updater.ema.module)
    eval_dtype = r.dtype if args.eval_amp else None  # fp32 by default: metrics independent of --amp
    val = evaluate(with_tta(r.evaluated, args.tta), r.val_loader, r.device, eval_dtype, pad_to, r.dist)
    row = {
        "epoch": epoch + 1, **{f"train_{k}": train[k] for k in ("loss", "top1", "top5")},
        **{f"val_{k}": val[k] for k in ("loss", "top1", "top5")},
        "lr": r.updater.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 2),
        "images_per_s": round(train["images"] / seconds, 1), "skipped_steps": train["skipped_steps"],
        "peak_memory_mb": round(peak_memory(r.device)[0], 1),  # rank 0's, since this process started
        "elapsed_minutes": round(r.minutes_before + (time.monotonic() - r.started) / 60, 4),
    }
    progress["history"].append(row)
    progress["epoch"] = epoch + 1
    # best.pt: highest val top-1; on a tie (common with a small val split) the lower val loss
    improved = (val["top1"], -val["loss"]) > (progress["best_val_top1"], -progress.get("best_val_loss", math.inf))
    if improved:
        progress.update(best_val_top1=val["top1"], best_val_loss=val["loss"], best_epoch=epoch + 1)
    on_main(r.dist, lambda: write_metrics(r.run_dir, progress["history"], r.train_loader.augmentation.mixing.enabled))
    r.loggers.epoch(row, progress["step"])
    if improved:  # best.pt first: a kill between the two never leaves a best.pt older than last.pt says
        # Every rank keeps them: the final test needs no best.pt, which only rank 0's disk holds.
        r.best_weights = {key: value.detach().to("cpu", copy=True) for key, value in evaluated_module(r).state_dict().items()}
        r.save("best.pt")
    keep = top_epochs(progress["history"], args.save_top_k) if args.save_top_k else set()
    if epoch + 1 in keep:
        r.save(epoch_checkpoint(epoch + 1))
    r.save("last.pt")
    if args.save_top_k:  # (after last.pt: a failed delete loses nothing)
        on_main(r.dist, lambda: remove_epoch_checkpoints(r.run_dir, keep))
    if r.dist.is_main:
        print(epoch_line(epoch, args.epochs, train, val, row, improved, r.train_loader.augmentation.mixing.enabled))
    return True


def step_logger(r):
    """train_one_epoch's on_log for --logger, or None."""
    if not r.loggers:
        return None
    return lambda step, loss, images_per_s: r.loggers.scalars(
        {"step/loss": loss, "step/lr": r.updater.optimizer.param_groups[0]["lr"], "step/images_per_s": images_per_s}, step)


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
        dtype = r.dtype if args.eval_amp else None
        metrics, _ = evaluate_with_report(with_tta(model, args.tta), loader, r.device, r.data, dtype, pad_to, dist)
        return {**metrics, "epoch": epoch}

    results = {"final": test(r.evaluated, progress["epoch"], pad_to)}
    if progress["best_epoch"] not in (0, progress["epoch"]):
        best = copy.deepcopy(evaluated_module(r))
        best.load_state_dict(best_weights(r))
        results["best"] = test(best, progress["best_epoch"])
    else:
        results["best"] = results["final"]
    results["final"]["elapsed_minutes"] = round(r.minutes_before + (time.monotonic() - r.started) / 60, 4)  # the run's end
    names = ("final", "best") if results["best"] is not results["final"] else ("final",)
    for name in names:
        metrics = results[name]
        weights = f"{name} EMA" if r.updater.ema else name
        tta = (", flip TTA" if args.tta == "flip" else "") + (f", {r.config['amp_dtype']}" if args.eval_amp and r.dtype else "")
        r.log(f"test ({weights} weights{tta}, epoch {metrics['epoch']}): loss {metrics['loss']:.4f} "
              f"top-1 {metrics['top1']:.2%} top-5 {metrics['top5']:.2%} macro-F1 {metrics['macro_f1']:.4f} ({metrics['images']:,} images)")
    return results


if __name__ == "__main__":
    sys.exit(main())
