"""Training runs at a glance: one line per run directory with its model, recipe, epochs done,
best val top-1, test top-1 and state (finished, interrupted, crashed, killed, running).

    python runs.py runs/*          # these run directories
    python runs.py runs            # every run directory inside runs/

Reads only what train.py writes (config.json, metrics.csv, test_metrics.json, status.json):
no torch, so it answers at once even for many runs.
"""
import argparse
import os
import socket
import sys

from cli import HelpFormatter, exit_quietly_on_ctrl_c, shell_command
from curves import read_metrics
from layout import DataError, read_json

COLUMNS = ("run", "model", "recipe", "epochs", "best val top-1", "test top-1", "state")


def find_runs(paths):
    """Run directories (those holding a config.json) among paths and, for a folder that is not
    a run itself, among its subfolders; plus the paths that held no run."""
    runs, not_runs = [], []
    for path in paths:
        if os.path.exists(os.path.join(path, "config.json")):
            runs.append(path)
        elif os.path.isdir(path):
            inside = sorted(e.path for e in os.scandir(path) if os.path.exists(os.path.join(e.path, "config.json")))
            runs += inside
            if not inside:
                not_runs.append(path)
        # files (a picture beside the runs, say) are not runs and need no mention
    return runs, not_runs


def process_alive(pid):
    """True or False on POSIX; None where that cannot be asked without side effects (Windows)."""
    if os.name == "nt":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def run_state(run_dir):
    """finished / interrupted / crashed: <error> / killed / running, from the files train.py writes."""
    if os.path.exists(os.path.join(run_dir, "test_metrics.json")):
        return "finished"
    status = read_json(os.path.join(run_dir, "status.json")) or {}
    state = status.get("state")
    if state == "interrupted":
        return "interrupted: " + shell_command("train.py", "--resume", os.path.join(run_dir, "last.pt"))
    if state == "crashed":
        return f"crashed: {status.get('detail')}"
    if state == "running":
        if status.get("host") != socket.gethostname():
            return f"running on {status.get('host')}, or killed"
        alive = process_alive(status["pid"])
        return "running" if alive else "running, or killed" if alive is None else "killed (no clean stop)"
    return "stopped" if os.path.exists(os.path.join(run_dir, "last.pt")) else "not started"


def describe_run(run_dir):
    """The row of one run."""
    config = read_json(os.path.join(run_dir, "config.json")) or {}
    try:
        metrics = read_metrics(run_dir)
    except DataError:  # no finished epoch yet
        metrics = {"epoch": [], "val_top1": []}
    done = int(metrics["epoch"][-1]) if metrics["epoch"] else 0
    best = max(zip(metrics["val_top1"], metrics["epoch"]), default=None)
    test = (read_json(os.path.join(run_dir, "test_metrics.json")) or {}).get("final")
    size = f"d{config.get('embed_dim')}x{config.get('depth')}" if "embed_dim" in config else ""
    return {
        "run": run_dir,
        "model": f"{config.get('model', 'cvt-simplified')} {size}".strip(),
        "recipe": config.get("recipe", "?"),
        "epochs": f"{done}/{config.get('epochs', '?')}",
        "best val top-1": f"{best[0]:.2%} (epoch {int(best[1])})" if best else "-",
        "test top-1": f"{test['top1']:.2%}" if test else "-",
        "state": run_state(run_dir),
    }


def markdown_table(rows):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run directories, or folders holding them")
    args = parser.parse_args(argv)
    runs, not_runs = find_runs(args.paths)
    for path in not_runs:
        print(f"note: {path} holds no train.py run (no config.json)", file=sys.stderr)
    if not runs:
        print("error: no train.py run directories among the paths given", file=sys.stderr)
        return 2
    print(markdown_table([describe_run(run_dir) for run_dir in runs]))
    return 0


if __name__ == "__main__":
    exit_quietly_on_ctrl_c()
    sys.exit(main())
