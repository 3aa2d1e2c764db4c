"""What a training run tells as it goes, beside the files rundir.py writes (metrics.csv is always
written): its opening lines on the console, and the optional loggers of `train.py --logger`:

    python train.py --epochs 10 --logger tensorboard        # then: tensorboard --logdir runs
    WANDB_MODE=offline python train.py --logger tensorboard wandb

TensorBoard's event files go into the run directory, so `tensorboard --logdir runs` shows every
run side by side under its folder's name; W&B logs to its project (WANDB_PROJECT, default
tiny-imagenet-cvt), online or offline. Both log, at the optimizer step each value describes:
every --log-every steps the mean loss of those steps, the lr and images/s (step/...); after each
epoch its row of metrics.csv (train/..., val/...); once, the run's settings; at the end the test
metrics (test/...). Rank 0 alone logs. A resumed run continues the same curves: TensorBoard
hides what an interrupted process logged after its last checkpoint (purge_step), W&B resumes
the run id that config.json records (wandb_id), though it keeps what a hard-killed process
logged after its last checkpoint (W&B has no purge).

The packages are extras (requirements-extras.txt), imported only when asked for.
"""
import importlib.util
import os
import secrets
import string
from dataclasses import asdict

from errors import INSTALL_EXTRAS, DataError
from model import count_parameters, has_batchnorm
from recipe import LRSchedule
from train_flags import describe_recipe

WANDB_PROJECT = "tiny-imagenet-cvt"
EPOCH_SCALARS = {"train/loss": "train_loss", "train/top1": "train_top1", "train/top5": "train_top5",
                 "val/loss": "val_loss", "val/top1": "val_top1", "val/top5": "val_top5", "epoch/lr": "lr",
                 "epoch/images_per_s": "images_per_s", "epoch/elapsed_minutes": "elapsed_minutes"}


def check_installed(names):
    """A DataError naming the extras for the first logger whose package is not installed: said
    before any data is read, not after the first epoch."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise DataError(f"--logger {name} needs the {name} package, which is not installed: {INSTALL_EXTRAS}")


def new_wandb_id():
    """A run id as W&B makes them: 8 random lowercase letters and digits."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class Loggers:
    """The loggers a run asked for, as one: scalars(values, step), finish(test_metrics), close().
    Empty (every call does nothing) without --logger, and on every rank but 0."""

    def __init__(self, names, run_dir, config, resumed_at_step, enabled=True):
        self.loggers = []
        if not enabled:
            return
        try:
            if "tensorboard" in names:
                self.loggers.append(TensorBoardLogger(run_dir, config, resumed_at_step))
            if "wandb" in names:
                self.loggers.append(WandbLogger(run_dir, config))
        except Exception as error:  # not logged in, no network, a wandb or tensorboard that fails to start: one line
            self.close(failed=True)
            hint = " (WANDB_MODE=offline logs without a network; `wandb login` for online)" if "wandb" in names else ""
            raise DataError(f"--logger {' '.join(names)} could not start: {str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__}{hint}") from None

    def __bool__(self):
        return bool(self.loggers)

    def scalars(self, values, step):
        for logger in self.loggers:
            logger.scalars(values, step)

    def epoch(self, row, step):
        self.scalars({tag: row[key] for tag, key in EPOCH_SCALARS.items()}, step)

    def finish(self, test_metrics, step):
        if not self.loggers:
            return
        values = {f"test/{key}": test_metrics["final"][key] for key in ("loss", "top1", "top5", "macro_f1")}
        if test_metrics["best"] is not test_metrics["final"]:
            values.update({f"test_best/{key}": test_metrics["best"][key] for key in ("loss", "top1", "top5", "macro_f1")})
        self.scalars(values, step)

    def close(self, failed=False):
        for logger in self.loggers:
            logger.close(failed)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        self.close(failed=kind is not None)


def plain_hparams(config):
    """The settings as the values TensorBoard's hparams and W&B's config take: numbers, strings
    and booleans as they are, everything else (None, lists, dicts) as its text."""
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value) for key, value in config.items()}


class TensorBoardLogger:
    def __init__(self, run_dir, config, resumed_at_step):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # On resume: events after the checkpoint's step were logged by a process that then died;
        # TensorBoard hides every event from purge_step on, in the files written before this one.
        self.writer = SummaryWriter(run_dir, purge_step=resumed_at_step + 1 if resumed_at_step is not None else None)
        if resumed_at_step is None:  # the settings once, in this run's own folder (add_hparams would make another)
            for summary in hparams(plain_hparams(config), {"val/top1": None, "test/top1": None}):
                self.writer.file_writer.add_summary(summary)

    def scalars(self, values, step):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self, failed=False):
        self.writer.close()


class WandbLogger:
    def __init__(self, run_dir, config):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), dir=run_dir, id=config["wandb_id"],
                              name=os.path.basename(os.path.normpath(run_dir)), resume="allow", config=plain_hparams(config))

    def scalars(self, values, step):
        self.run.log(values, step=step)

    def close(self, failed=False):
        self.run.finish(exit_code=1 if failed else 0)


# ---------------------------------------------------------------- the console


def announce_resume(r, checkpoint):
    """What a resumed run continues from, and how its lr schedule changed if it did (more --epochs)."""
    progress, args, updater = r.progress, r.args, r.updater
    where = (f"at step {progress['step_in_epoch']} of epoch {progress['epoch'] + 1}" if progress["step_in_epoch"]
             else f"after epoch {progress['epoch']}")  # numbered as the stop message numbered it
    r.log(f"resuming {args.resume} {where}")
    saved_schedule = checkpoint.get("schedule")
    if saved_schedule and saved_schedule != asdict(updater.schedule):
        step = progress["step"]
        r.log(f"note: the lr schedule now spans {args.epochs} epochs (it was {saved_schedule['total_steps'] // len(r.train_loader)}): "
              f"the lr at step {step} goes from {LRSchedule(**saved_schedule)(step):.3g} to {updater.schedule(step):.3g}")


def announce_run(r):
    """Where the run trains, on what, for how long and to where; the model and recipe; the notes."""
    args, dist, splits = r.args, r.dist, r.splits
    r.log(f"training on {r.device}{f' x {dist.world_size} processes' if dist.enabled else ''} "
          f"({r.config['amp_dtype'] or 'fp32'}{', compiled' if args.compile else ''}): "
          f"{len(splits['train'][1]):,} train / {len(splits['val'][1]):,} val images, "
          f"{len(r.data.classes)} classes, {args.epochs} epoch{'s' if args.epochs != 1 else ''} -> {r.run_dir}")
    r.log(f"model {args.model}: {count_parameters(r.model):,} parameters; recipe {args.recipe}: {describe_recipe(args)}")
    for note in args.notes:
        r.log(f"note: {note}")
    if dist.enabled and has_batchnorm(r.model) and not args.sync_bn:
        r.log(f"note: {args.model} has BatchNorm: each of the {dist.world_size} processes normalises its own share of "
              "the batch, so this is not exactly one process's training (--sync-bn on CUDA makes it so)")
    if args.logger:
        where = {"tensorboard": f"tensorboard --logdir {os.path.dirname(os.path.normpath(r.run_dir)) or '.'}",
                 "wandb": f"W&B run {r.config['wandb_id']} ({os.environ.get('WANDB_MODE', 'online')})"}
        r.log("logging to " + "; ".join(where[name] for name in args.logger))
