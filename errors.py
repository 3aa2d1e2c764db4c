"""The error every script reports as one line and exit code 2: a problem with the user's data or
inputs. Its own module, below everything, so that the command-line helpers (cli.py) and the data
layout (layout.py) can both raise and catch it without importing each other.
"""


class DataError(Exception):
    """A problem with the user's data or inputs: reported as one line, exit code 2."""
