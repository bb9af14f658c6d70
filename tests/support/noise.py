"""Things a process may write to its streams, for the one-record-per-write tests.

Plain functions (no Celery): they also run in the worker's job processes, which import them.
"""

from __future__ import annotations

import sys
import threading
import traceback

NOISES = ("print", "chars", "print_exc", "excepthook", "thread")


def _boom(marker: str) -> None:
    raise ValueError(f"boom {marker}")


def make_noise(noise: str, marker: str) -> str:
    """Write `marker` to stderr the way `noise` says; returns where it ran (for the test)."""
    if noise == "print":
        print(f"{marker}\nb\nc", file=sys.stderr)
    elif noise == "chars":
        for char in f"{marker}\nsecond line\n    ^^^^\n":
            sys.stderr.write(char)
    elif noise == "print_exc":
        try:
            _boom(marker)
        except ValueError:
            traceback.print_exc()
    elif noise == "excepthook":
        # The interpreter's own printer: it writes the ^^^ markers a character at a time.
        try:
            _boom(marker)
        except ValueError:
            sys.__excepthook__(*sys.exc_info())
    elif noise == "thread":
        thread = threading.Thread(target=_boom, args=(marker,), name=f"noisy-{marker}")
        thread.start()
        thread.join()
    else:
        raise ValueError(f"no such noise: {noise}")
    return threading.current_thread().name
