"""What every script's command line shares: --help that shows the defaults, progress that suits
a terminal and a log file alike, commands printed so that they can be pasted, a quiet Ctrl-C
while torch is still importing, and SIGINT/SIGTERM that stop training after the current step
(StopSignal). Kept free of torch so that it loads instantly.
"""
import argparse
import os
import shlex
import signal
import subprocess
import sys
import time

from tqdm import tqdm

from errors import DataError

PLAIN_PROGRESS_SECONDS = 30  # in a log file: one progress line this often


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help lists every flag's default, and keeps the docstring's line breaks. A flag whose
    default is None (unset) or False (a switch) says in its help what happens without it."""

    def _get_help_string(self, action):
        if action.default is None or action.nargs == 0:  # unset, or a switch (store_true, store_false)
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with --help showing the defaults, and a bad flag reported in one line (with the
    way to the full usage) instead of the usage block followed by the error."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def exit_quietly_on_ctrl_c():
    """A Ctrl-C before main() handles it itself (torch takes a second or two to import) ends
    the script with one line instead of Python's KeyboardInterrupt traceback; output piped
    into a reader that stops early (`| head`) ends it silently, as for any Unix tool."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            print("\ninterrupted", file=sys.stderr)
        elif issubclass(kind, BrokenPipeError):  # (and no second error when Python flushes stdout at exit)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook


def exit_code_of(run, args):
    """A script's main: run(args), then 0; a DataError (a problem with the user's data or inputs)
    is its one `error:` line and 2; a Ctrl-C is one line and 130."""
    try:
        run(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def command_text(words):
    """A command line the user can paste into their shell as printed (paths with spaces quoted)."""
    words = list(map(str, words))
    return subprocess.list2cmdline(words) if os.name == "nt" else shlex.join(words)


def shell_command(*words):
    """command_text of a python script's command."""
    return command_text(["python", *words])


def short_label(path):
    """'cvt/best.pt' for runs/cvt/best.pt: a checkpoint named by its run folder and file."""
    return "/".join(os.path.normpath(path).split(os.sep)[-2:])


def resume_command(run_dir):
    """The command that continues the run in run_dir."""
    return shell_command("train.py", "--resume", os.path.join(run_dir, "last.pt"))


def duration(seconds):
    """72 -> '1m12s'; 4000 -> '1h06m'."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_bar(total, desc, unit, initial=0, leave=True, disable=False):
    """tqdm's bar on a terminal; in a log file (nohup, a batch scheduler, `| tee`), where the
    bar's carriage-return frames are noise and tqdm would print nothing else, a plain line every
    PLAIN_PROGRESS_SECONDS."""
    if disable or sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", initial=initial, leave=leave,
                    disable=disable, mininterval=1)
    return PlainProgress(total, desc, unit, initial)


class PlainProgress:
    """The part of tqdm's interface the scripts use, printed as lines such as
    `epoch 1/10: 400/1562 steps (26%), loss 4.812, 680 img/s, 4m03s left`."""

    def __init__(self, total, desc, unit, initial=0):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start_n = initial
        self.postfix = ""
        self.start = self.last_print = time.perf_counter()

    def update(self, n=1):
        self.n += n
        now = time.perf_counter()
        if now - self.last_print >= PLAIN_PROGRESS_SECONDS:
            self.last_print = now
            print(self.line(now), file=sys.stderr, flush=True)

    def set_postfix_str(self, text):
        self.postfix = text

    def line(self, now):
        scale, unit = (1e6, "MB") if self.unit == "B" else (1, self.unit)  # a download counts bytes
        n, total = round(self.n / scale), round((self.total or 0) / scale)
        done = f"{n:,}/{total:,} {unit}" if self.total else f"{n:,} {unit}"
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        rate = (self.n - self.start_n) / max(now - self.start, 1e-9)
        left = f", {duration((self.total - self.n) / rate)} left" if self.total and rate > 0 else ""
        return f"{self.desc}: {done}{share}{', ' + self.postfix if self.postfix else ''}{left}"

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


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
