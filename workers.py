"""The process pool that prepare_data.py extracts and decodes with: one worker per core, started by
the platform's default method, with Ctrl-C left to the main process. Not here: what the workers
do (extraction.py, packing.py).
"""
import multiprocessing
import os
import signal


START_METHOD = None  # the platform's default (fork on Linux, spawn on macOS and Windows); tests force spawn


def process_pool(initializer=None, initargs=()):
    """One worker per core, started by the platform's default method: workers get their state
    from initializer(*initargs) alone, never from a forked parent's memory. Ctrl-C is for the
    main process, which then stops the workers: where the platform has signal masks (not on
    Windows), SIGINT is blocked while the pool starts (so no worker can die half-started and hang
    the pool, and a Ctrl-C meanwhile is delivered to the main process right after), and workers
    ignore it."""
    set_sigint_blocked(True)
    try:
        return multiprocessing.get_context(START_METHOD).Pool(
            os.cpu_count(), initializer=start_worker, initargs=(initializer, initargs)
        )
    finally:
        set_sigint_blocked(False)


def set_sigint_blocked(blocked):
    if hasattr(signal, "pthread_sigmask"):  # (absent on Windows, where no signal can interrupt the start)
        signal.pthread_sigmask(signal.SIG_BLOCK if blocked else signal.SIG_UNBLOCK, {signal.SIGINT})


def start_worker(initializer, initargs):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_sigint_blocked(False)
    if initializer is not None:
        initializer(*initargs)
