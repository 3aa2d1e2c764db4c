"""The errors the scripts report as one line: DataError (the user's data or inputs, exit code 2)
and TrainingError (training cannot go on, exit code 1). Their own module, below everything, so
that the command-line helpers (cli.py) and the data layout (layout.py) can both raise and catch
them without importing each other.
"""


# What a missing optional package's one-line error tells the user to run (--logger, export.py, --hf folders)
INSTALL_EXTRAS = "python -m pip install -r requirements-extras.txt"


class DataError(Exception):
    """A problem with the user's data or inputs: reported as one line, exit code 2."""


class TrainingError(Exception):
    """Training cannot go on (e.g. the loss diverged); reported as one line, exit code 1."""
