"""Run a grid of training runs, every (model, recipe, seed) as its own train.py run, then print
the study's table (compare.py) over them.

    python benchmarks/study.py --models cvt-simplified cnn vit --recipe study --epochs 30 --seeds 0 1 2 --out-dir runs/study
    python benchmarks/study.py --recipes seed study improved --epochs 10 --data-dir data-mini
    python benchmarks/study.py --models cnn "vit-96x6=--model vit --embed-dim 96 --depth 6 --num-heads 3" --batch-size 128
    python benchmarks/study.py --models cvt-simplified cnn --print --nproc-per-node 4   # the torchrun commands

An entry of --models is a model name (`python model.py --list`) or LABEL=FLAGS (train.py flags:
--model and its settings); an entry of --recipes is a preset (seed, study, improved,
vit-small-data) or LABEL=FLAGS. Any other flag goes to every train.py run (an entry's own
flags win over it). Each run trains into OUT/<model>-<recipe>-s<seed>, one after the other,
with one line of progress each. Run it again to continue a grid: finished runs are skipped,
interrupted ones resumed from their last.pt (finished ones extended when --epochs grew); a run
that fails is reported and the others go on.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

if __name__ == "__main__":  # before the imports below, which take a moment
    from cli import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import contextlib  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import train_flags  # noqa: E402
from cli import ArgumentParser, command_text, duration  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402
from errors import DataError  # noqa: E402
from layout import data_identity, read_meta  # noqa: E402
from recipe import PRESETS  # noqa: E402
from model import DEFAULT_MODEL  # noqa: E402
from resume import RUN_DEFINING, run_differences  # noqa: E402
from rundir import CONFIG, LAST, METRICS, STATUS, file_of, read_config, read_status, read_test_metrics  # noqa: E402
from runs import run_state  # noqa: E402

TRAIN = os.path.join(ROOT, "train.py")
LABEL = re.compile(r"[A-Za-z0-9._-]+")  # one folder name, no path
GRID_SETS = ("seed", "epochs", "data_dir")  # train.py flags that the grid sets itself (and where runs go)
# what a finished run must have been trained with to count as this run of the grid
DEFINING = (*RUN_DEFINING, "amp", "amp_dtype", "compile", "compile_mode", "sync_bn", "tta", "eval_amp")


def parse_entry(entry, flag):
    """'cnn' -> ('cnn', ['--model', 'cnn']) for --models, 'study' -> ('study', ['--recipe', 'study'])
    for --recipes; 'name=--lr 3e-3' -> ('name', ['--lr', '3e-3'])."""
    if "=" in entry:
        label, flags = entry.split("=", 1)
        return label, shlex.split(flags)
    return entry, [flag, entry]


class GridRun:
    """One (model, recipe, seed) of the grid and the train.py command that trains it."""

    def __init__(self, model, recipe, seed, args, common):
        (model_label, model_flags), (recipe_label, recipe_flags) = model, recipe
        self.name = f"{model_label}-{recipe_label}-s{seed}"
        self.run_dir = os.path.join(args.out_dir, self.name)
        self.seed, self.epochs, self.data_dir = seed, args.epochs, args.data_dir
        # the entries' flags last: argparse keeps the last value, so they win over the common ones
        self.flags = ["--data-dir", args.data_dir, "--epochs", str(args.epochs), "--seed", str(seed),
                      *common, *model_flags, *recipe_flags]
        self.parsed = None  # train.py's parse of the flags (check_commands)

    def train_argv(self, state):
        if state == "resume":
            return [*self.flags, "--resume", os.path.join(self.run_dir, "last.pt")]
        return [*self.flags, "--run-dir", self.run_dir]

    def state(self, data):
        """('finished', epochs), ('resume', epochs done), ('new', None or why it starts afresh),
        or ('refused', why), from what the run's folder holds; data: the identity of --data-dir."""
        config = read_config(self.run_dir)
        if config is None:
            return "new", None
        state = run_state(self.run_dir)
        if state.startswith("running"):
            return "refused", f"may be training now ({state}); if it is not, delete its status.json"
        try:
            differences = self.differences(config, data)
        except (DataError, KeyError, TypeError, ValueError) as error:  # a config this version cannot read
            return "refused", f"holds a run that cannot be compared with this one ({error}): use another --out-dir"
        if config.get("steps"):
            return "refused", "holds a run of planned --steps (or --time-budget), not of whole epochs: use another --out-dir"
        if differences:
            return "refused", f"holds a run with other settings ({', '.join(differences)}): use another --out-dir or label"
        if config.get("epochs", 0) > self.epochs:
            return "refused", f"holds a {config['epochs']}-epoch run, more than --epochs {self.epochs}: use another --out-dir"
        final = read_test_metrics(self.run_dir).get("final", {})
        finished = state == "finished" and final.get("epoch") == config.get("epochs")
        if finished and final["epoch"] == self.epochs:
            return "finished", self.epochs
        last = file_of(self.run_dir, LAST)
        if os.path.exists(last):
            try:
                return "resume", load_checkpoint(last)["progress"]["epoch"]
            except DataError as error:
                return "refused", f"holds a last.pt that does not load ({error})"
        if finished:
            return "refused", f"holds a finished {final['epoch']}-epoch run without its last.pt, which cannot be extended"
        return "new", "stopped before its first checkpoint"

    def differences(self, config, data):
        """How the run in the folder was trained otherwise than this run would be (resume.py's
        comparison, which train.py --resume makes too): the recipe, batch size, precision and
        compilation, the model and its settings, the data."""
        keys = [key for key in DEFINING if getattr(self.parsed, key) not in (None, "auto")]  # (auto: resolved then)
        return run_differences(self.parsed, config, keys, data=data)


def parse_train_flags(run):
    """train.py's args for the run, or a DataError with train.py's one-line reason."""
    message = io.StringIO()
    try:
        with contextlib.redirect_stderr(message):
            return train_flags.parse_args(run.train_argv("new"))
    except SystemExit:
        said = message.getvalue().strip().splitlines() or ["(it stopped without a word: --help?)"]
        reason = said[-1].split("error: ", 1)[-1].removesuffix(" (--help lists the flags)")
        raise DataError(f"{run.name}: train.py refuses its flags: {reason}") from None


def check_commands(runs, shared_flags, model_flags):
    """Every run's flags, parsed as train.py parses them, before any training (a typo is one line
    now, not a failure hours into the grid); none may change what the grid sets."""
    for flags in shared_flags:  # the common flags and every entry's
        given = train_flags.explicit_flags(flags)
        if "model" in given and not any(flags is own for own in model_flags):
            raise DataError(f"--model in {' '.join(flags)}: give models with --models (NAME or LABEL=FLAGS)")
        if given.keys() & {"run_dir", "resume"}:
            raise DataError(f"{' '.join(flags)}: where runs go is the grid's to say: use --out-dir")
    for run in runs:
        run.parsed = parse_train_flags(run)
        changed = [f"--{key.replace('_', '-')}" for key in GRID_SETS if getattr(run.parsed, key) != getattr(run, key)]
        changed += ["--resume"] if run.parsed.resume else []
        if changed:
            raise DataError(f"{run.name}: its flags set {', '.join(changed)}, which the grid sets: "
                            "use --seeds, --epochs, --data-dir and --out-dir")


def display_path(path):
    try:
        return os.path.relpath(path)
    except ValueError:  # Windows: on another drive
        return path


def command_line(run, state, nproc):
    """(the command that trains run, the same as the user would type it): python train.py, or
    torchrun (the torch of this Python) with several processes."""
    argv = run.train_argv(state)
    if nproc > 1:
        options = ["--standalone", f"--nproc-per-node={nproc}"]
        return ([sys.executable, "-m", "torch.distributed.run", *options, TRAIN, *argv],
                ["torchrun", *options, display_path(TRAIN), *argv])
    return [sys.executable, TRAIN, *argv], ["python", display_path(TRAIN), *argv]


def run_command(command, quiet):
    """(exit code, the last line it wrote to stderr when quiet; None otherwise: the output went to
    the terminal, live)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL if quiet else None,
                               stderr=subprocess.PIPE if quiet else None, text=True, errors="replace")
    try:
        _, errors = process.communicate()
    except KeyboardInterrupt:  # train.py got the Ctrl-C too: let it save its checkpoint and stop
        process.communicate()
        raise
    if not quiet:
        return process.returncode, None
    # (words only: torchrun ends with a banner of '=')
    lines = [line.strip() for line in errors.replace("\r", "\n").splitlines() if any(c.isalpha() for c in line)]
    return process.returncode, lines[-1] if lines else ""


def failure_reason(run, last_line):
    if last_line:
        return last_line
    status = read_status(run.run_dir) or {}
    return status.get("detail") if status.get("state") == "crashed" else "its output above says why"


def train_run(run, index, total, args, data):
    """Train (or skip, or resume) one run; True when it is finished."""
    state, detail = run.state(data)
    prefix = f"[{index}/{total}] {run.name}:"
    if state == "finished":
        print(f"{prefix} finished before ({detail} epochs), skipped", flush=True)
        return True
    if state == "refused":
        print(f"{prefix} FAILED: {run.run_dir} {detail}", flush=True)
        return False
    if state == "new" and detail:  # no weights to keep, only train.py's notes of the start
        for name in (CONFIG, STATUS, METRICS):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(run.run_dir, name))
    command, shown = command_line(run, state, args.nproc_per_node)
    what = f"resuming from its last.pt ({detail} of {run.epochs} epochs done before)" if state == "resume" else "training"
    print(f"{prefix} {what}: {command_text(shown)}", flush=True)
    start = time.perf_counter()
    code, last_line = run_command(command, args.quiet)
    took = duration(time.perf_counter() - start)
    if code != 0:
        print(f"{prefix} FAILED after {took} (exit code {code}): {failure_reason(run, last_line)}", flush=True)
        return False
    test = read_test_metrics(run.run_dir).get("final", {})
    print(f"{prefix} finished in {took}: test top-1 {test.get('top1', float('nan')):.2%}", flush=True)
    return True


def print_commands(runs, nproc, data):
    """--print: what is left to do, as commands to paste (the rest as comments)."""
    for run in runs:
        state, detail = run.state(data)
        if state == "finished":
            print(f"# {run.name}: finished ({detail} epochs)")
        elif state == "refused":
            print(f"# {run.name}: {run.run_dir} {detail}")
        else:
            if state == "new" and detail:
                print(f"# {run.name}: {detail}: delete {run.run_dir} first")
            print(command_text(command_line(run, state, nproc)[1]))


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,  # (--seed is train.py's, not --seeds)
                            epilog="Any other flag is given to every train.py run, e.g. --batch-size 128 --amp.")
    parser.add_argument("--models", nargs="+", default=[DEFAULT_MODEL], metavar="MODEL",
                        help="model names, or LABEL=FLAGS for a model with settings")
    parser.add_argument("--recipes", "--recipe", nargs="+", default=["seed"], metavar="RECIPE",
                        help=f"presets ({', '.join(PRESETS)}), or LABEL=FLAGS")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run")
    parser.add_argument("--data-dir", default="data", help="prepared by prepare_data.py")
    parser.add_argument("--out-dir", default="runs/study", help="runs go to OUT_DIR/<model>-<recipe>-s<seed>")
    parser.add_argument("--print", dest="print_only", action="store_true",
                        help="print the commands of the runs still to do instead of running them")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes per run (torchrun when more than 1)")
    parser.add_argument("--quiet", action="store_true", help="hide train.py's output (a failed run's error still shows)")
    parser.add_argument("--no-table", dest="table", action="store_false", help="skip compare.py's table at the end")
    args, common = parser.parse_known_args(argv)
    if args.epochs < 1 or args.nproc_per_node < 1:
        parser.error("--epochs and --nproc-per-node must be at least 1")
    try:
        labels = [parse_entry(e, "--model")[0] for e in args.models] + [parse_entry(e, "--recipe")[0] for e in args.recipes]
    except ValueError as error:  # shlex: an unclosed quote
        parser.error(f"an entry's flags cannot be read ({error})")
    bad = [label for label in labels if not LABEL.fullmatch(label)]
    if bad:
        parser.error(f"label {bad[0]!r}: a label names a folder: letters, digits, '.', '_' and '-' only")
    return args, common


def main(argv=None):
    args, common = parse_args(argv)
    models = [parse_entry(entry, "--model") for entry in args.models]
    recipes = [parse_entry(entry, "--recipe") for entry in args.recipes]
    runs = [GridRun(model, recipe, seed, args, common) for model in models for recipe in recipes for seed in args.seeds]
    try:
        names = [run.name for run in runs]
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice:
            raise DataError(f"two runs of the grid would share the folder {twice}: a seed given twice, or two "
                            "--models or --recipes entries with one label")
        check_commands(runs, [common, *(flags for _, flags in recipes + models)], [flags for _, flags in models])
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    meta = read_meta(args.data_dir)
    data = data_identity(meta) if meta else None  # (none yet: each run says so when it starts)
    if args.print_only:
        print_commands(runs, args.nproc_per_node, data)
        return 0
    start = time.perf_counter()
    finished = [run for index, run in enumerate(runs, 1) if train_run(run, index, len(runs), args, data)]
    failed = [run.name for run in runs if run not in finished]
    print(f"{len(finished)} of {len(runs)} runs finished in {duration(time.perf_counter() - start)}"
          + (f"; failed: {', '.join(failed)} (see why above: running this command again retries a run that failed "
             "in training; a refused folder needs another --out-dir or label)" if failed else ""), flush=True)
    if args.table and finished:
        import compare

        print()
        compare.main([run.run_dir for run in finished])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
