"""Training runs at a glance: one line per run directory with its model, recipe, epochs done,
best val top-1, test top-1 and state (finished, interrupted, crashed, killed, running).

    python runs.py runs/*          # these run directories
    python runs.py runs            # every run directory inside runs/

Reads only what train.py writes (config.json, metrics.csv, test_metrics.json, status.json):
no torch, so it answers at once even for many runs.
"""
import glob
import os
import socket
import sys

from cli import ArgumentParser, exit_quietly_on_ctrl_c, resume_command
from rundir import LAST, TEST_METRICS, file_of, is_run, read_config, read_metrics, read_status, read_test_metrics
from errors import DataError

COLUMNS = ("run", "model", "recipe", "epochs", "best val top-1", "test top-1", "state")


def find_runs(paths):
    """Run directories (those holding a config.json) among paths and, for a folder that is not
    a run itself, among its subfolders, each once; plus the paths that held no run."""
    runs, not_runs = [], []
    for path in paths:
        if is_run(path):
            found = [path]
        elif os.path.isdir(path):
            found = sorted(e.path for e in os.scandir(path) if is_run(e.path))
        else:
            found = []
        if not found and (os.path.isdir(path) or not os.path.exists(path)):
            not_runs.append(path)  # (a file beside the runs, a picture say, needs no mention)
        seen = {os.path.realpath(run) for run in runs}
        runs += [run for run in found if os.path.realpath(run) not in seen]
    return runs, not_runs


def expand_globs(paths):
    """The paths with their patterns expanded: Windows shells pass `runs/*` through unexpanded."""
    return [path for arg in paths for path in ([arg] if os.path.exists(arg) else sorted(glob.glob(arg)) or [arg])]


def not_a_run(path):
    """Why path was left out, as a note."""
    return f"{path} {'holds no train.py run (no config.json)' if os.path.exists(path) else 'does not exist'}"


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
    return not is_zombie(pid)


def is_zombie(pid):
    """A process that has ended but was not reaped (its parent was killed too, and nothing
    reaps orphans in this container, say) still answers kill(pid, 0), but runs no more."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):  # no /proc (macOS): a zombie cannot be told from a live process
        return False


def run_state(run_dir):
    """finished / interrupted / crashed: <error> / killed / running, from status.json (runs from
    before it existed: finished when they have test results)."""
    status = read_status(run_dir)
    if status is None:
        return "finished" if os.path.exists(file_of(run_dir, TEST_METRICS)) else "stopped"
    state = status.get("state")
    if state == "interrupted":
        has_checkpoint = os.path.exists(file_of(run_dir, LAST))
        return f"interrupted: {resume_command(run_dir)}" if has_checkpoint else "interrupted before its first checkpoint"
    if state == "crashed":
        return f"crashed: {status.get('detail')}"
    if state == "running":
        if status.get("host") != socket.gethostname():
            return f"running on {status.get('host')}, or killed"
        alive = process_alive(status["pid"]) if isinstance(status.get("pid"), int) else None
        return "running" if alive else "running, or killed" if alive is None else "killed (no clean stop)"
    return str(state)


def describe_run(run_dir):
    """The row of one run."""
    config = read_config(run_dir) or {}
    try:
        metrics = read_metrics(run_dir)
    except DataError:  # no finished epoch yet
        metrics = {"epoch": [], "val_top1": []}
    done = int(metrics["epoch"][-1]) if metrics["epoch"] else 0
    # best.pt's rule (train.py): the highest val top-1, a tie going to the lower val loss
    best = max(zip(metrics["val_top1"], [-v for v in metrics.get("val_loss", [])], metrics["epoch"]), default=None)
    state = run_state(run_dir)
    # test results belong to a finished run (an extended run still holds the shorter run's)
    test = read_test_metrics(run_dir).get("final") if state == "finished" else None
    return {
        "run": run_dir,
        "model": describe_model(config),
        "recipe": config.get("recipe", "?"),
        "epochs": f"{done}/{config.get('epochs', '?')}",
        "best val top-1": f"{best[0]:.2%} (epoch {int(best[2])})" if best else "-",
        "test top-1": f"{test['top1']:.2%}" if test else "-",
        "state": state,
    }


def describe_model(config):
    """'vit' or 'vit (depth 6, drop-path 0.2)': the model and the settings it changed, as
    train.py described it (read without torch, so that the listing answers at once)."""
    if "model_description" in config:
        return config["model_description"]
    if "embed_dim" in config:  # runs from before the model registry: the notebook's model, its size as flags
        return f"cvt-simplified d{config['embed_dim']}x{config.get('depth')}"
    return config.get("model", "?")


def markdown_table(rows):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run directories, or folders holding them")
    args = parser.parse_args(argv)
    runs, not_runs = find_runs(expand_globs(args.paths))
    for path in not_runs:
        print(f"note: {not_a_run(path)}", file=sys.stderr)
    if not runs:
        print("error: no train.py run directories among the paths given", file=sys.stderr)
        return 2
    print(markdown_table([describe_run(run_dir) for run_dir in runs]))
    return 0


if __name__ == "__main__":
    exit_quietly_on_ctrl_c()
    sys.exit(main())
