"""The shared shell of every ``python -m`` command: logging set-up and one-line errors."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from common.errors import UserError


def run_cli(job: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None) -> int:
    """Runs ``job(argv)``; a ``UserError`` becomes ``error: <message>`` on stderr and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return job(argv) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def int_list(text: str) -> list[int]:
    """argparse type for flags like ``--batches 1,8``: comma-separated integers, each >= 1."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


class OneLineParser(argparse.ArgumentParser):
    """argparse whose bad flags and values are a ``UserError``: one line and exit status 2 through
    ``run_cli``, not argparse's usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")
