"""Is this the same run? What train.py --resume adopts from a saved run, what it refuses, and
how benchmarks/study.py tells whether a run folder holds the run its flags describe: one
comparison for both, so that a grid extends every run that a resume would extend.

Also the resume itself: reading the checkpoint on every rank, restoring the optimizer, scaler,
EMA and RNG states, and bringing best.pt along into a new run directory. Not here: the
checkpoint format (checkpoint.py), the training loop (train.py).
"""
import math
import os
import socket
from dataclasses import asdict

import torch

from checkpoint import class_difference, load_checkpoint, restore_rng_states, save_checkpoint
from errors import DataError
from layout import data_identity
from rundir import read_test_metrics
from runtime import on_main
from model import DEFAULT_MODEL, MODELS, format_setting, given_settings, make_config, parse_setting
from recipe import PRESET_MODEL_SETTINGS, RECIPE_FLAGS, warmup_epochs

RUN_DEFINING = ("batch_size", "grad_accum", "seed", "recipe", *RECIPE_FLAGS)  # the model and its settings: from the checkpoint
NOT_RECORDED_MEANT = {"grad_accum": 1}  # what a run from before a setting was recorded had
ADOPTED = (*RUN_DEFINING, "epochs", "steps", "time_budget", "budget_plan", "eval_batch_size", "tta", "eval_amp", "data_dir",
           "log_every", "earlier_data", "recipe_defaults", "save_top_k", "logger", "wandb_id")  # (--sync-bn is the machine's)


class NothingToDo(Exception):
    """--resume of a run that has already trained and been tested for the epochs asked: said in
    one line, exit code 0, no file touched."""


def flag(key):
    return f"--{key.replace('_', '-')}"


# ---------------------------------------------------------------- the comparison


def run_differences(args, saved, keys, data=None, model_from_saved=False):
    """'--flag value (the run has its value)' for each way the run that args describe differs
    from the saved run (its config.json, or a checkpoint's config): each key of `keys`, the model
    and its settings, and (with data, an identity from layout.data_identity) the data.
    A warm-up is compared as asked for (warmup_compared): a run extended keeps the warm-up it had.
    model_from_saved: settings not given are the saved model's (a resume adopts them); else the
    model's defaults with the recipe's (a grid's entry names the whole model)."""
    found, saved = [], {**NOT_RECORDED_MEANT, **saved}
    for key in keys:
        if key not in saved:
            continue
        saved_key, value, shown = key, getattr(args, key), getattr(args, key)
        if key == "warmup_epochs":
            (saved_key, value), shown = warmup_compared(args, saved), args.warmup_spec
        if value != saved[saved_key]:
            found.append(f"{flag(key)} {shown} (the run has {saved[saved_key]})")
    if "model_config" in saved:  # (runs from before the model registry have none: the model is not compared)
        found += model_differences(args, saved.get("model") or DEFAULT_MODEL, saved["model_config"], model_from_saved)
    return found + data_differences(args, saved, data)


def data_differences(args, saved, data):
    """[how the data in --data-dir (its identity: layout.data_identity) differs from the run's], or []."""
    if data is None or not saved.get("data") or saved["data"] == data:
        return []
    return [f"--data-dir {args.data_dir} holds other data ({describe_data(data)}) than the run trained on "
            f"({describe_data(saved['data'])})"]


def warmup_compared(args, saved):
    """(the saved key, args' value) to compare a warm-up by: as asked for (10%, or a recipe's 5
    epochs, whatever the run's length made of it), except when --warmup-epochs and --epochs are
    both given: then the warm-up they make."""
    if "warmup_spec" in saved and not {"warmup_epochs", "epochs"} <= set(args.given):
        return "warmup_spec", args.warmup_spec
    epochs = args.epochs if "epochs" in args.given else saved.get("epochs", args.epochs)  # (runs from before the record)
    return "warmup_epochs", warmup_epochs(args.warmup_spec, epochs)[0]


def model_differences(args, saved_name, saved_config, model_from_saved):
    """The model flags of args that differ from the saved model, compared through its config (so
    that --depth 1 equals a saved (1, 1, 1))."""
    if args.model != saved_name and (not model_from_saved or "model" in args.given):
        return [f"--model {args.model} (the run has {saved_name})"]
    config_class = MODELS[saved_name].config
    saved, given = config_class(**saved_config), given_settings(args)
    known = asdict(saved)  # (settings added since the run was saved: their defaults)
    unknown = [key for key in given if key not in known]
    if unknown:
        return [f"{flag(key)} ({saved_name} has no such setting)" for key in unknown]
    try:
        if model_from_saved:
            wanted = config_class(**{**saved_config, **{key: parse_setting(config_class, key, text) for key, text in given.items()}})
        else:
            preset = {key: value for key, value in PRESET_MODEL_SETTINGS.get(args.recipe, {}).items() if key in known}
            wanted = make_config(saved_name, saved.num_classes, **{**preset, **given})
    except ValueError as error:
        raise DataError(str(error)) from None
    return [f"{flag(key)} {format_setting(getattr(wanted, key))} (the run has {format_setting(getattr(saved, key))})"
            for key in asdict(saved) if getattr(wanted, key) != getattr(saved, key)]


def describe_data(identity):
    source = identity.get("source", {})
    name = source.get("zip") or source.get("name") or ("SYNTHETIC" if identity.get("synthetic") else "?")
    counts = identity.get("counts", {})
    sizes = " + ".join(f"{counts[split]:,} {split}" for split in ("train", "val") if split in counts)
    return f"{os.path.basename(str(name))}: {sizes} images" if sizes else os.path.basename(str(name))


# ---------------------------------------------------------------- train.py --resume


def check_resumable(checkpoint, path):
    if not {"optimizer", "progress", "model_config", "classes"} <= checkpoint.keys():
        raise DataError(f"cannot resume {path}: it is not a train.py checkpoint (no optimizer state or progress)")


def saved_run(checkpoint):
    """The run's config as a checkpoint saved it, with its model from the checkpoint itself."""
    return {**checkpoint.get("config", {}), "model": checkpoint.get("model_name", DEFAULT_MODEL),
            "model_config": checkpoint["model_config"]}


def adopt_saved_settings(args, checkpoint, path):
    """On --resume the run's own settings apply: flags not given take the saved values; a given
    flag that would change what the run is (model, recipe, seed, batch size) is refused."""
    saved = saved_run(checkpoint)
    conflicts = run_differences(args, saved, [key for key in RUN_DEFINING if key in args.given], model_from_saved=True)
    if conflicts:
        raise DataError(f"cannot resume {path} with different settings: {', '.join(conflicts)}; "
                        "start a new run (--run-dir) to change them")
    for key in ADOPTED:
        if key not in args.given and key in saved:
            setattr(args, key, saved[key])
    if "warmup_epochs" in saved:  # what the run's warm-up became, whatever was given (the same, or refused above)
        args.warmup_spec, args.warmup_epochs = saved.get("warmup_spec", saved["warmup_epochs"]), saved["warmup_epochs"]
    if "recipe_defaults" not in saved:  # (a run from before the record: what its recipe set is not known)
        args.recipe_defaults = {}
    args.model = saved["model"]
    if saved.get("steps") and "epochs" in args.given:
        raise DataError(f"cannot resume {path} with --epochs: the run is {saved['steps']} steps long, as "
                        f"{'--time-budget' if saved.get('time_budget') else '--steps'} planned it")
    check_epochs_to_go(args, checkpoint["progress"], path)


def check_epochs_to_go(args, progress, path):
    """--epochs of a resume: at least the epochs the run has begun; equal to those it finished and
    tested is nothing to do (NothingToDo), before any file is touched."""
    done, begun = progress["epoch"], progress["epoch"] + (1 if progress["step_in_epoch"] else 0)
    if args.epochs < begun:
        what = f"{done} epoch{'s' if done != 1 else ''}" + (f" and part of epoch {begun}" if begun > done else "")
        raise DataError(f"cannot resume {path} with --epochs {args.epochs}: the run has trained {what}; "
                        f"give --epochs {begun} or more")
    tested = read_test_metrics(os.path.dirname(os.path.abspath(path))).get("final", {})
    if args.epochs == done and begun == done and tested.get("epoch") == done:
        more = (f"give --epochs {done + 1} or more" if not args.steps else
                "its length is its planned steps: start a new run with more --steps or a longer --time-budget")
        raise NothingToDo(f"nothing to do: {path} has trained its {done} epoch{'s' if done != 1 else ''} and been "
                          f"tested; to train on, {more}")


def check_same_data(args, checkpoint, data, path):
    """The data of a resume (a data.PackedData) is the run's (moved or copied anywhere), or, with
    --allow-other-data, another set with the same classes, recorded in config.json's earlier_data."""
    if class_difference(checkpoint["classes"], data.classes):
        raise DataError(f"cannot resume {path}: it was trained on a different class list "
                        f"({class_difference(checkpoint['classes'], data.classes)})")
    saved = saved_run(checkpoint)
    differences = data_differences(args, saved, data_identity(data.meta))
    if differences and not args.allow_other_data:
        raise DataError(f"cannot resume {path}: {differences[0]}; resume with --data-dir pointing at the run's data, "
                        "or give --allow-other-data to go on with this data")
    if differences:
        args.earlier_data = [*saved.get("earlier_data", []), saved["data"]]


def keep_saved_precision(args, checkpoint, device):
    """On the same kind of device, a resumed run keeps its precision and compilation unless
    --amp, --amp-dtype or --compile say otherwise (an fp32 run stays fp32); on another kind of
    device, what that device defaults to."""
    saved = checkpoint.get("config", {})
    if torch.device(saved.get("device", "cpu")).type != device.type:
        return
    if "amp" not in args.given and "amp" in saved:
        args.amp = saved["amp"]
    if "amp_dtype" not in args.given and saved.get("amp_dtype"):
        args.amp_dtype = saved["amp_dtype"]
    for key in ("compile", "compile_mode"):
        if key not in args.given and key in saved:
            setattr(args, key, saved[key])


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
