"""Status lines from library code: `say` writes one line to stderr, from one process only.

Under torchrun every process runs the same library calls; rank 0 speaks for the job (the CLI
also silences the other ranks' output, but a Python user's own script under torchrun has only
this). Torch-free, so the CLI can ask `is_main_process` before importing anything heavy.
"""

from __future__ import annotations

import os
import sys


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0 (read from the RANK variable torchrun sets)."""
    return os.environ.get("RANK", "0") in ("", "0")


def say(message: str) -> None:
    """Print `message` to stderr (flushed) on the main process; nothing on the other ranks."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)
