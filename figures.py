"""How the kit draws: matplotlib drawing to files only (no display needed), PNGs written
atomically, and a one-line note instead of a picture where matplotlib is missing (the rest of
a command's output is written all the same). Not here: what is drawn (curves.py, compare.py,
robustness.py, explain.py, lr_find.py).
"""
import sys

from layout import write_atomically

MATPLOTLIB_HINT = "matplotlib is not installed: `python -m pip install matplotlib`"


def pyplot():
    """matplotlib.pyplot, drawing to files only (so it works without a display); ImportError
    when matplotlib is missing. How every script of the kit that draws gets it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out):
    """Write the figure to out as a PNG (atomically: never half a file) and free it."""
    try:
        write_atomically(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        pyplot().close(fig)


def plot_or_note(draw, rows, out):
    """draw(rows, out), announced in a line; without matplotlib, a note on stderr instead (the
    other outputs are written all the same)."""
    try:
        draw(rows, out)
        print(f"plot: {out}")
    except ImportError:
        print(f"note: {MATPLOTLIB_HINT} to draw {out}", file=sys.stderr)
