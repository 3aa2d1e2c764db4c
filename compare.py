"""The study's table: runs that differ only in their seed become one row, with test top-1,
top-5, macro-F1 and loss as mean ± standard deviation over the seeds, the model's parameters
and GFLOPs, its training speed as recorded, and its inference latency and throughput measured
here, side by side.

    python compare.py runs/study/*                     # run directories (or folders of them)
    python compare.py runs/study --json study.json --csv study.csv --plot study.png
    python compare.py runs/study/* --reevaluate        # recompute the test figures, flag any that differ
    python compare.py runs/a/best.pt study.ckpt --data-dir data    # checkpoints too, any mix

The test figures are each run's recorded ones (train.py's test of its final weights, or of
best.pt with --weights best); a checkpoint without recorded figures is evaluated on the test
split. Runs on different data (another prepared source, other classes) are never grouped.
Standard deviations are sample standard deviations (n - 1); one seed has none. Exit code 1
when a re-evaluation disagrees with a run's record, 2 when nothing could be compared.
"""
import sys

if __name__ == "__main__":  # before the imports below, which take a moment
    from cli import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import asdict

import torch

from checkpoint import check_classes, load_checkpoint, model_from_checkpoint
from cli import ArgumentParser
from figures import plot_or_note, pyplot, save_figure
from constants import IMAGE_SIZE
from data import BatchLoader, load_packed, make_splits
from evaluation import evaluate_with_report, evaluation_dtype, measure_throughput, with_tta
from errors import DataError
from layout import check_output_path, data_identity, write_rows
from model import MODELS, build_model, count_parameters, flops_per_image
from recipe import RECIPE_FLAGS
from corruptions import corruption_summary
from rundir import is_run, read_config, read_corruption_rows, read_metrics, read_test_metrics
from runs import describe_model, expand_globs, find_runs, not_a_run, run_state
from runtime import amp_dtype, autocast, configure_backends, resolve_device, synchronize

KEYS = ("model", "recipe", "epochs", "seeds", "top1_mean", "top1_std", "top5_mean", "top5_std", "f1_mean", "f1_std",
        "loss_mean", "loss_std", "params", "gflops", "train_images_per_s", "seconds_per_epoch", "latency_ms_batch1",
        "images_per_s_batch256", "runs", "mean_ce_mean", "mean_ce_std", "mce_mean", "mce_std")
CORRUPTION_COLUMNS = {"mean_ce": "mean CE % (corruptions)", "mce": "mCE %"}
FIGURES = {"top1": "top1", "top5": "top5", "f1": "macro_f1", "loss": "loss"}  # JSON name -> the recorded one's
# What may differ between the runs of one row besides the seed: where they were written, and
# settings that change no figure (how often to log, the evaluation batch) or are derived.
NOT_DEFINING = ("seed", "run_dir", "resume", "data_dir", "log_every", "eval_batch_size", "model_description",
                "peak_memory_what", "budget_plan", "save_top_k", "logger", "wandb_id")
# a --time-budget run's plan is measured, so each seed's length differs: its budget defines it
PLANNED = ("steps", "epochs", "warmup_epochs", "recipe_defaults")
LATENCY_WARMUP, LATENCY_RUNS, LATENCY_SECONDS = 10, 50, 1.0
THROUGHPUT_BATCH = 256
NOT_CHECKPOINTS = (".json", ".csv", ".png", ".md", ".txt", ".log")  # files beside runs that need no mention


# ---------------------------------------------------------------- reading runs


def recipe_label(config):
    """'improved', or 'improved (lr 0.003, batch 128)': the recipe, and each setting in which the
    run differs from what its recipe set, both as the run's config.json recorded them (runs from
    before that record: the recipe's name alone)."""
    recipe_set = config.get("recipe_defaults", {})
    changed = [key for key in (*RECIPE_FLAGS, "batch_size") if key in recipe_set and key in config and config[key] != recipe_set[key]]
    shown = [f"batch {config[key]}" if key == "batch_size" else
             f"{key.replace('_', '-')} {config[key]:g}" if isinstance(config[key], float) else
             f"{key.replace('_', '-')} {config[key]}" for key in changed]
    shown += [f"grad-accum {config['grad_accum']}"] if config.get("grad_accum", 1) > 1 else []
    name = config.get("recipe", "?")
    return f"{name} ({', '.join(shown)})" if shown else name


def data_label(identity):
    """'tiny-imagenet-200-mini.zip', or 'SYNTHETIC (10 classes)': where the run's data came from."""
    if "data_dir" in identity:  # a run from before the data was recorded
        return f"{identity['data_dir']}/ (as named then)"
    source = identity.get("source", {})
    if isinstance(source.get("synthetic"), dict):
        return f"SYNTHETIC ({source['synthetic'].get('classes', '?')} classes)"
    name = source.get("zip") or ("a folder extracted elsewhere" if source.get("reused") else "?")
    return f"SYNTHETIC ({name})" if identity.get("synthetic") else name


def trained_on(config):
    """'cpu bfloat16', 'cuda fp32 compiled x 4 processes', '?' for a foreign checkpoint."""
    if "device" not in config:
        return "?"
    parts = [config["device"], config.get("amp_dtype") or "fp32"]
    parts += ["compiled"] if config.get("compile") else []
    parts += [f"x {config['world_size']} processes"] if config.get("world_size", 1) > 1 else []
    return " ".join(parts)


def training_speed(run_dir):
    """(images/s, seconds per epoch, peak memory MB or None) from metrics.csv: medians over the
    epochs after the first (which includes compilation and warm-up), all epochs if only one."""
    metrics = read_metrics(run_dir)
    steady = slice(1, None) if len(metrics["epoch"]) > 1 else slice(None)
    memory = [m for m in metrics.get("peak_memory_mb", []) if not math.isnan(m)]  # (NaN: not recorded then)
    return (statistics.median(metrics["images_per_s"][steady]), statistics.median(metrics["seconds"][steady]),
            max(memory) if memory else None)


def run_record(config, source, weights, test, checkpoint_path, speed_dir=None, identity=None):
    """One run as compare.py reads it: what defines its group, its labels and its figures."""
    identity = identity or config.get("data") or {"data_dir": config.get("data_dir")}  # (old runs: the folder name)
    images_per_s, seconds, memory = training_speed(speed_dir) if speed_dir else (None, None, None)
    planned = PLANNED if config.get("time_budget") else ()
    defining = {key: value for key, value in config.items() if key not in NOT_DEFINING + planned}
    if defining.get("grad_accum") == 1:  # runs from before --grad-accum recorded none: the same runs
        del defining["grad_accum"]
    if "device" in config:  # cuda:0 and cuda:1 are the same kind of machine
        defining["device"] = torch.device(config["device"]).type
    return {
        "source": source, "checkpoint": checkpoint_path, "config": config, "weights": weights, "test": test,
        "key": json.dumps({**defining, "data": identity, "weights": weights}, sort_keys=True, default=str),
        "model_name": config["model"], "model_config": config["model_config"], "model": describe_model(config),
        "recipe": recipe_label(config), "epochs": config.get("epochs"), "seed": config.get("seed"),
        "data": data_label(identity), "trained_on": trained_on(config),
        "train_images_per_s": images_per_s, "seconds_per_epoch": seconds, "peak_memory_mb": memory,
        "peak_memory_what": config.get("peak_memory_what"),
    }


def read_run(run_dir, weights):
    """The record of a run directory; a DataError when it has no test figures (yet)."""
    config = read_config(run_dir)
    if not isinstance(config, dict):
        raise DataError(f"{run_dir}: its config.json is damaged")
    state = run_state(run_dir)
    recorded = read_test_metrics(run_dir) if state == "finished" else {}
    if recorded.get("final", {}).get("epoch") != config.get("epochs"):  # (an extension that died at once)
        recorded = {}
    test = recorded.get(weights)
    if test is None:
        raise DataError(f"{run_dir} has no test figures ({state if state != 'finished' else 'an unfinished extension'})")
    checkpoint = os.path.join(run_dir, "last.pt" if weights == "final" else "best.pt")
    if "model_config" not in config:  # a run from before the model registry: its checkpoint knows
        model = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
        config = {**config, "model": model.model_name, "model_config": asdict(model.config)}
    record = run_record(config, run_dir, weights, test, checkpoint, speed_dir=run_dir)
    return {**record, **corruption_figures(run_dir, checkpoint)}


def corruption_figures(run_dir, checkpoint):
    """{"mean_ce", "mce"} of the checkpoint from the run's corruptions.json (robustness.py
    --corruptions all --json RUN/corruptions.json), None where there is none (mCE: where the file
    also holds the baseline's rows)."""
    mine, baseline = read_corruption_rows(run_dir, checkpoint)
    if not mine or len({row["corruption"] for row in mine}) < 2:
        return {"mean_ce": None, "mce": None}
    try:
        summary = corruption_summary(mine, baseline or None)
    except (ValueError, KeyError, StopIteration):  # not the same settings as the baseline's, or no clean row
        summary = corruption_summary(mine) if any(row["corruption"] == "clean" for row in mine) else {"mean_ce": None}
    return {"mean_ce": summary["mean_ce"], "mce": summary.get("mce")}


def read_checkpoint(path, data_dir, device, batch_size):
    """The record of a checkpoint file. A train.py checkpoint inside a run folder takes its run's
    recorded test figures (refused while the run is unfinished); any other is evaluated now."""
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, path)
    folder = os.path.dirname(os.path.abspath(path))
    config = {**(checkpoint.get("config") or {}), "model": model.model_name, "model_config": asdict(model.config)}
    epoch = checkpoint.get("progress", {}).get("epoch")
    averaged = checkpoint.get("averaged_from")  # average.py's: evaluated now, a row of its own
    in_a_run = "config" in checkpoint and is_run(folder) and not averaged
    if in_a_run:
        state = run_state(folder)
        if state != "finished":
            raise DataError(f"{path}: its run is not finished ({state}), so its weights are not a result yet")
        recorded = read_test_metrics(folder)
        weights = next((w for w in ("final", "best") if recorded.get(w, {}).get("epoch") == epoch), None)
        if weights:
            return run_record(config, path, weights, recorded[weights], path, speed_dir=folder)
    if averaged:  # (what it averaged is part of its key: two averages of one run are two rows)
        config["averaged_from"], weights = averaged, f"average of {len(averaged)} checkpoints"
    elif "config" in checkpoint:  # a train.py checkpoint on its own: as many epochs as it trained
        config["epochs"], weights = epoch, f"epoch {epoch}"
    else:  # a foreign checkpoint (the study's Lightning runs): nothing says how it was trained, a row of its own
        config.update(recipe="?", checkpoint=os.path.abspath(path))
        weights = "foreign"
    test, identity = test_figures(model, checkpoint, path, data_dir or config.get("data_dir") or "data", device,
                                  batch_size, expected=config.get("data"))
    return {**run_record(config, path, weights, test, path, identity=identity), "evaluated_now": True}


def test_figures(model, checkpoint, path, data_dir, device, batch_size, expected=None):
    """(top-1, top-5, macro-F1 and loss on the test split, the data's identity), computed with
    evaluate.py's own functions, as the run tested (its precision and TTA); a DataError when the data is not
    what the checkpoint was trained on (expected: the identity its run recorded)."""
    try:
        data = load_packed(data_dir)
    except DataError as error:
        raise DataError(f"cannot evaluate {path}: {error} (give --data-dir)") from None
    identity = data_identity(data.meta)
    if expected and identity != expected:
        raise DataError(f"cannot evaluate {path} on {data_dir}: it holds other data than it trained on "
                        f"({data_label(identity)}, not {data_label(expected)}); give --data-dir")
    check_classes(checkpoint, data.classes, path)
    if model.config.num_classes != len(data.classes):
        raise DataError(f"{path} predicts {model.config.num_classes} classes, the data in {data_dir}/ has {len(data.classes)}")
    loader = BatchLoader(*make_splits(data)["test"], batch_size, device)
    tested = with_tta(model.to(device), checkpoint.get("config", {}).get("tta"))
    return evaluate_with_report(tested, loader, device, data, evaluation_dtype(None, checkpoint, device))[0], identity


def reevaluate(record, data_dir, device, batch_size):
    """Recompute a run's test figures from its checkpoint and use them; the differences from its
    record beyond rounding (a list of strings, empty when they agree)."""
    checkpoint = load_checkpoint(record["checkpoint"])
    model = model_from_checkpoint(checkpoint, record["checkpoint"])
    config = record["config"]
    computed, _ = test_figures(model, checkpoint, record["checkpoint"], data_dir or config.get("data_dir") or "data",
                               device, batch_size, expected=config.get("data"))
    recorded, record["test"] = record["test"], computed
    # Rounding: a compiled model, TF32 on a GPU or another batch size may flip a near-tie or two
    # among thousands of images (0.05% of them), never a figure beyond that.
    one_image = 1.0 / computed["images"]
    flips = max(one_image / 2, 0.0005)
    tolerance = {"top1": flips, "top5": flips, "macro_f1": 4 * flips, "loss": 1e-3 * computed["loss"]}
    return [f"{name} {recorded[name]:.4f} recorded, {computed[name]:.4f} now" for name in tolerance
            if name in recorded and abs(recorded[name] - computed[name]) > tolerance[name]]  # (old runs have no F1)


# ---------------------------------------------------------------- groups and their figures


def group_runs(records):
    """(lists of records that differ only in seed, in the order they first appear; a note for
    each record that repeats another's settings and seed, left out so that no run counts twice)."""
    groups, notes = {}, []
    for record in records:
        group = groups.setdefault(record["key"], [])
        twin = next((other for other in group if record["seed"] is not None and other["seed"] == record["seed"]), None)
        if twin:
            notes.append(f"{record['source']}: the same settings and seed as {twin['source']} (counted once)")
        else:
            group.append(record)
    return list(groups.values()), notes


def mean_std(values):
    """(mean, sample standard deviation or None for one value); (None, None) when a value is
    missing (a run recorded before the figure existed: --reevaluate computes it)."""
    if not values or None in values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


@torch.no_grad()
def inference_speed(model, device, dtype):
    """(median ms of a forward of one image, images/s in batches of 256), eager, random images."""
    model = model.to(device).eval()
    x = torch.randn(1, model.config.in_channels, IMAGE_SIZE, IMAGE_SIZE, device=device)
    times = []
    with autocast(device, dtype):
        for _ in range(LATENCY_WARMUP):
            model(x)
        synchronize(device)
        while len(times) < LATENCY_RUNS or sum(times) < LATENCY_SECONDS:
            start = time.perf_counter()
            model(x)
            synchronize(device)
            times.append(time.perf_counter() - start)
    batch = torch.randn(THROUGHPUT_BATCH, *x.shape[1:], device=device)
    return statistics.median(times) * 1000, measure_throughput(model, batch, device, dtype)


def summarize(group, speed):
    """One row of the table: the KEYS and what else a reader needs to trust it. speed: None, or
    (a function timing a model, where and in which precision it runs)."""
    first = group[0]
    torch.manual_seed(0)  # (random weights time like trained ones; seeded only so that nothing varies)
    model = build_model(first["model_name"], config=MODELS[first["model_name"]].config(**first["model_config"]))
    row = {"model": first["model"], "recipe": first["recipe"], "epochs": first["epochs"], "seeds": len(group)}
    for name, key in FIGURES.items():
        row[f"{name}_mean"], row[f"{name}_std"] = mean_std([r["test"].get(key) for r in group])
    row["params"], row["gflops"] = count_parameters(model), flops_per_image(model) / 1e9
    row["train_images_per_s"] = mean_std([r["train_images_per_s"] for r in group])[0]
    row["seconds_per_epoch"] = mean_std([r["seconds_per_epoch"] for r in group])[0]
    row["latency_ms_batch1"], row["images_per_s_batch256"] = speed[0](model) if speed else (None, None)
    row["runs"] = [r["source"] for r in group]
    for figure in ("mean_ce", "mce"):  # (robustness.py --corruptions, where the runs carry it)
        row[f"{figure}_mean"], row[f"{figure}_std"] = mean_std([r.get(figure) for r in group])
    memory = [r["peak_memory_mb"] for r in group if r["peak_memory_mb"] is not None]
    row.update(
        weights=first["weights"], seed_values=[r["seed"] for r in group], data=first["data"],
        test_images=first["test"].get("images"), trained_on=first["trained_on"],
        inference_on=speed[1] if speed else None, peak_train_memory_mb=max(memory) if memory else None,
        peak_train_memory_what=first["peak_memory_what"] if memory else None,
        reevaluation_differs=[r["source"] for r in group if r.get("differs")],
    )
    return row


# ---------------------------------------------------------------- output


def plus_minus(mean, std, scale=100, digits=2):
    if mean is None:
        return "-"
    return f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def cell(value, spec):
    return "-" if value is None else format(value, spec)


def markdown_table(rows):
    columns = ("model", "recipe", "epochs", "seeds", "test top-1 %", "test top-5 %", "macro-F1", "test loss", "params",
               "GFLOPs", "train img/s", "s/epoch", "trained on", "latency ms (batch 1)", "img/s (batch 256)",
               "train peak MB", "data")
    text = ("model", "recipe", "trained on", "data")
    corrupted = [figure for figure in ("mean_ce", "mce") if any(row[f"{figure}_mean"] is not None for row in rows)]
    columns += tuple(CORRUPTION_COLUMNS[figure] for figure in corrupted)  # where the runs carry robustness.py's rows
    lines = ["| " + " | ".join(columns) + " |", "|" + "".join("---|" if c in text else "---:|" for c in columns)]
    for row in rows:
        model = row["model"] + ("" if row["weights"] == "final" else f" [{row['weights']} weights]")
        model += " (re-evaluation differs)" if row["reevaluation_differs"] else ""
        cells = [model, row["recipe"], cell(row["epochs"], ""), row["seeds"], plus_minus(row["top1_mean"], row["top1_std"]),
                 plus_minus(row["top5_mean"], row["top5_std"]), plus_minus(row["f1_mean"], row["f1_std"], 1, 4),
                 plus_minus(row["loss_mean"], row["loss_std"], 1, 3), f"{row['params']:,}", f"{row['gflops']:.3f}",
                 cell(row["train_images_per_s"], ",.0f"), cell(row["seconds_per_epoch"], ",.1f"), row["trained_on"],
                 cell(row["latency_ms_batch1"], ".2f"), cell(row["images_per_s_batch256"], ",.0f"),
                 cell(row["peak_train_memory_mb"], ",.0f"), row["data"],
                 *(plus_minus(row[f"{figure}_mean"], row[f"{figure}_std"], digits=1) for figure in corrupted)]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def footnote(rows):
    """How the columns were measured, under the table."""
    images = sorted({row["test_images"] for row in rows if row["test_images"]})
    lines = [f"Test figures on {' or '.join(f'{n:,}' for n in images)} test images, mean ± sample std over seeds; "
             "training img/s and s/epoch: each run's median over the epochs after the first (its metrics.csv), "
             "averaged over seeds, on the device it trained on."]
    if rows[0]["inference_on"]:
        lines.append(f"Inference measured now on {rows[0]['inference_on']}, eager, random images: latency is the median "
                     f"of at least {LATENCY_RUNS} single-image forwards after {LATENCY_WARMUP} warm-up ones.")
    if any(row["mean_ce_mean"] is not None for row in rows):
        lines.append("mean CE: 1 - top-1 under each corruption averaged over its severities, then over the corruptions "
                     "(robustness.py --corruptions' rows in each run's corruptions.json); mCE: each corruption's errors "
                     "over the baseline's in that file, averaged (100%: the baseline).")
    memory = sorted({row["peak_train_memory_what"] for row in rows if row["peak_train_memory_what"]})
    if memory:
        lines.append(f"Train peak MB: {'; '.join(memory)}.")
    return "\n".join(lines)


def draw_plot(rows, out):
    """Test top-1 against parameters and against latency (log x), a point per row with its std."""
    from matplotlib.ticker import FuncFormatter

    plt = pyplot()

    panels = [("params", "parameters")]
    if any(row["latency_ms_batch1"] for row in rows):
        panels.append(("latency_ms_batch1", f"inference latency, batch 1 (ms, {rows[0]['inference_on']})"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    several_recipes = len({row["recipe"] for row in rows}) > 1
    colours = {model: f"C{i % 10}" for i, model in enumerate(dict.fromkeys(row["model"] for row in rows))}
    markers = {recipe: "osD^v<>p*h"[i % 10] for i, recipe in enumerate(dict.fromkeys(row["recipe"] for row in rows))}
    for ax, (key, xlabel) in zip(axes[0], panels):
        for row in rows:
            if row[key] is None or row["top1_mean"] is None:
                continue
            label = f"{row['model']}, {row['recipe']}" if several_recipes else row["model"]
            ax.errorbar(row[key], row["top1_mean"] * 100, yerr=(row["top1_std"] or 0) * 100, fmt=markers[row["recipe"]],
                        color=colours[row["model"]], capsize=4)
            ax.annotate(label, (row[key], row["top1_mean"] * 100), textcoords="offset points", xytext=(6, 4),
                        fontsize="small")
        ax.set_xscale("log")
        ax.margins(x=0.25)  # room for the labels of the points at the right
        if key == "latency_ms_batch1":  # (a narrow log range: plain numbers read better than 2x10^0)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test top-1 (%)")
        ax.grid(True, which="both", alpha=0.3)
    seeds = sorted({row["seeds"] for row in rows})
    fig.suptitle(f"test top-1, mean ± std over {' or '.join(map(str, seeds))} seed{'s' if seeds != [1] else ''} "
                 f"({', '.join(sorted({row['data'] for row in rows}))})")
    fig.tight_layout()
    save_figure(fig, out)


def write_outputs(rows, args):
    write_rows(rows, [*KEYS, *(key for key in rows[0] if key not in KEYS)], args.json, args.csv)
    if args.plot:
        plot_or_note(draw_plot, rows, args.plot)


# ---------------------------------------------------------------- command line


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run directories, folders of them, or checkpoints")
    parser.add_argument("--weights", choices=("final", "best"), default="final",
                        help="whose test figures: the final weights' (the notebook's trainer.test) or best.pt's")
    parser.add_argument("--reevaluate", action="store_true",
                        help="recompute every run's test figures from its checkpoint and flag those that differ")
    parser.add_argument("--data-dir", help="prepared data for evaluations (default: the one each run trained on)")
    parser.add_argument("--device", default="auto", help="for evaluations and the inference timings: auto, cpu, cuda, mps")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                        help="time inference under autocast (bf16; fp16 on GPUs without bf16), as evaluate.py --amp; "
                             "off: fp32")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch in evaluations")
    parser.add_argument("--no-speed", dest="speed", action="store_false", help="skip the inference timings")
    parser.add_argument("--json", metavar="PATH", help="also write one object per row")
    parser.add_argument("--csv", metavar="PATH", help="also write one line per row")
    parser.add_argument("--plot", metavar="PATH.png", help="also draw test top-1 against parameters and latency")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def read_all(args, device):
    """The records of every run and checkpoint among the paths, and a note for each left out."""
    paths = expand_globs(args.paths)
    files = [path for path in paths if os.path.isfile(path)]
    run_dirs, not_runs = find_runs([path for path in paths if path not in files])
    records, notes = [], [not_a_run(path) for path in not_runs]
    for run_dir in run_dirs:
        try:
            records.append(read_run(run_dir, args.weights))
        except DataError as error:
            notes.append(str(error))
    for path in files:
        if path.endswith(NOT_CHECKPOINTS):
            continue
        try:
            records.append(read_checkpoint(path, args.data_dir, device, args.batch_size))
        except DataError as error:
            notes.append(str(error))
    return records, notes


def reevaluate_all(records, args, device):
    """--reevaluate: every record that was not just evaluated; (those kept, notes)."""
    kept, notes = [], []
    for record in records:
        try:
            if not record.get("evaluated_now"):
                record["differs"] = reevaluate(record, args.data_dir, device, args.batch_size)
        except DataError as error:
            notes.append(str(error))
            continue
        if record.get("differs"):
            print(f"warning: {record['source']}: a re-evaluation of {record['checkpoint']} differs from the recorded "
                  f"test figures: {'; '.join(record['differs'])}", file=sys.stderr)
        kept.append(record)
    return kept, notes


def run(args):
    for path, flag in ((args.json, "--json"), (args.csv, "--csv"), (args.plot, "--plot")):
        if path:  # before any work: an unwritable output must not waste the measurements
            check_output_path(path, flag)
    device = resolve_device(args.device)
    configure_backends(device)  # the numerics train.py evaluates with (TF32 on CUDA)
    records, notes = read_all(args, device)
    if args.reevaluate:
        records, more = reevaluate_all(records, args, device)
        notes += more
        differ = sum(bool(record.get("differs")) for record in records)
        print(f"re-evaluated {len(records)} run{'s' if len(records) != 1 else ''}: "
              + (f"{differ} differ from their records" if differ else "all agree with their records"), file=sys.stderr)
    groups, more = group_runs(records)
    for note in notes + more:
        print(f"left out: {note}", file=sys.stderr)
    if not groups:
        raise DataError("nothing to compare: no run with test figures among the paths given")
    dtype = amp_dtype(device, args.amp)
    where = f"{device}, {str(dtype).replace('torch.', '') if dtype else 'fp32'}"
    timings = {}  # per architecture: rows of one model under several recipes show the same timing

    def timed(model):
        key = json.dumps([model.model_name, asdict(model.config)], default=str)
        if key not in timings:
            timings[key] = inference_speed(model, device, dtype)
        return timings[key]

    rows = [summarize(group, (timed, where) if args.speed else None) for group in groups]
    print(markdown_table(rows))
    print()
    print(footnote(rows))
    if any(row["data"].startswith("SYNTHETIC") for row in rows):
        print("warning: SYNTHETIC data in some rows (prepare_data.py --synthetic): a smoke test, not a result",
              file=sys.stderr)
    write_outputs(rows, args)
    return rows


def main(argv=None):
    args = parse_args(argv)
    try:
        rows = run(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if any(row["reevaluation_differs"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
