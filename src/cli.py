"""Run an entry point's ``main`` so that input mistakes end in one line, not a traceback.

``train.py``, ``eval.py``, ``infer.py``, ``export.py``, ``preprocess.py``, ``postprocess.py`` and ``tools/*.py``
end with ``run(main)``. An :class:`src.errors.InputError` (a bad config key or value, a malformed annotation
file, a checkpoint of another model...) or a missing input file (``FileNotFoundError``) is printed to stderr as
``<program>: error: <message>`` and the process exits with status 2, as argparse does for usage errors. Any
other exception is a bug and keeps its traceback.

A full traceback for input errors too: pass ``--debug`` (anywhere on the command line; it is removed before
``main`` parses its arguments) or set the environment variable ``DETZOO_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

from src.errors import InputError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "DETZOO_DEBUG"
EXIT_INPUT_ERROR = 2


def debug_requested(argv: Sequence[str]) -> bool:
    """True when ``argv`` holds ``--debug`` or ``DETZOO_DEBUG`` is set to anything but ``''``/``0``."""
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run(main: Callable[[Optional[list]], object], argv: Optional[Sequence[str]] = None,
        prog: Optional[str] = None) -> None:
    """Call ``main(argv without --debug)`` and exit: with its return value, or 2 after a one-line input error.

    Args:
        main: the entry point's ``main(argv)``; it may return an exit status (``None`` means 0).
        argv: command-line arguments (default ``sys.argv[1:]``).
        prog: the program name the error line starts with (default: the file name of ``sys.argv[0]``).

    Raises:
        SystemExit: always (the exit status).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    args = [a for a in argv if a != DEBUG_FLAG]
    try:
        status = main(args)
    except (InputError, FileNotFoundError) as error:
        if debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"{prog or os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
    sys.exit(status if isinstance(status, int) else 0)
