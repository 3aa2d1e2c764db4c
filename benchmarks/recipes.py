"""Compare training recipes on the same data, epochs and machine, over several seeds.

    python benchmarks/recipes.py --data-dir data-mini --epochs 10 --seeds 0 1 2
    python benchmarks/recipes.py --data-dir data-mini --recipes seed "lr3e-3=--recipe improved --lr 3e-3"

Each entry of --recipes is a preset name (seed, study, improved) or NAME=FLAGS (any train.py
flags). Every (entry, seed) trains with `python train.py` into OUT/NAME-sSEED; a run already
finished there is reused and an interrupted one resumed, so a sweep can be stopped and
continued. Prints a markdown table: val and test top-1/top-5 and the test loss of the final
weights, as the mean and the standard deviation over seeds, and the per-seed test top-1.
"""
import json
import os
import shlex
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cli import ArgumentParser  # noqa: E402
from layout import DataError, check_output_path, write_json  # noqa: E402


def parse_entry(entry):
    """'study' -> ('study', ['--recipe', 'study']); 'name=--lr 3e-3' -> ('name', ['--lr', '3e-3'])."""
    if "=" in entry:
        name, flags = entry.split("=", 1)
        return name, shlex.split(flags)
    return entry, ["--recipe", entry]


def train(name, flags, seed, args):
    run_dir = os.path.join(args.out_dir, f"{name}-s{seed}")
    if os.path.exists(os.path.join(run_dir, "test_metrics.json")):
        return run_dir
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--data-dir", args.data_dir, "--epochs", str(args.epochs),
               "--seed", str(seed), *flags, *shlex.split(args.train_flags)]
    if os.path.exists(os.path.join(run_dir, "last.pt")):
        command += ["--resume", os.path.join(run_dir, "last.pt")]
    else:
        command += ["--run-dir", run_dir]
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL if args.quiet else None)
    return run_dir


def run_summary(run_dir):
    test = json.load(open(os.path.join(run_dir, "test_metrics.json")))["final"]
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        header, *rows = [line.strip().split(",") for line in f if line.strip()]
    last = dict(zip(header, rows[-1]))
    return {"val_top1": float(last["val_top1"]), "val_top5": float(last["val_top5"]), "test_top1": test["top1"],
            "test_top5": test["top5"], "test_loss": test["loss"], "minutes": sum(float(dict(zip(header, r))["seconds"]) for r in rows) / 60}


def mean_std(values, percent=True):
    """'9.81 ± 0.40': the mean and the sample standard deviation over seeds."""
    values, digits = ([v * 100 for v in values], 2) if percent else (values, 3)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results, seeds):
    lines = [f"| recipe | val top-1 % | val top-5 % | test top-1 % | test top-5 % | test loss | test top-1 per seed ({', '.join(map(str, seeds))}) | train min/run |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for name, runs in results.items():
        column = lambda key: [run[key] for run in runs]  # noqa: E731
        per_seed = ", ".join(f"{v * 100:.2f}" for v in column("test_top1"))
        lines.append(f"| {name} | {mean_std(column('val_top1'))} | {mean_std(column('val_top5'))} | "
                     f"{mean_std(column('test_top1'))} | {mean_std(column('test_top5'))} | "
                     f"{mean_std(column('test_loss'), percent=False)} | {per_seed} | "
                     f"{statistics.mean(column('minutes')):.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="prepared by prepare_data.py")
    parser.add_argument("--recipes", nargs="+", default=["seed", "study", "improved"], help="presets or NAME=FLAGS")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed and entry")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run")
    parser.add_argument("--out-dir", default="runs/recipes", help="runs go to OUT_DIR/NAME-sSEED")
    parser.add_argument("--train-flags", default="", help="added to every train.py command, e.g. '--batch-size 32'")
    parser.add_argument("--json", help="also write every run's numbers here")
    parser.add_argument("--quiet", action="store_true", help="hide train.py's output")
    args = parser.parse_args(argv)
    if args.json:
        try:
            check_output_path(args.json, "--json")
        except DataError as error:
            parser.exit(2, f"error: {error}\n")
    results = {}
    for entry in args.recipes:
        name, flags = parse_entry(entry)
        results[name] = [run_summary(train(name, flags, seed, args)) for seed in args.seeds]
    print(table(results, args.seeds))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
