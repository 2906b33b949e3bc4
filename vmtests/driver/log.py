"""Test log output: one line per command and event, prefixed with the time and the machine.

Why: a failed scenario is read from this log (and the journals printed after it),
so every command a test runs is shown with the machine it ran on.
"""

from __future__ import annotations

import sys
import time

_T0 = time.monotonic()
quiet = False


def _stamp() -> str:
    return f"{time.monotonic() - _T0:7.2f}"


def info(who: str, msg: str) -> None:
    print(f"{_stamp()} {who}: {msg}", flush=True)


def cmd(who: str, command: str) -> None:
    if not quiet:
        short = command if len(command) < 300 else command[:300] + "…"
        print(f"{_stamp()} {who}# {short}", flush=True)


def output(who: str, text: str) -> None:
    if quiet:
        return
    for line in text.rstrip().splitlines()[-20:]:
        print(f"{_stamp()} {who}| {line}", flush=True)


def reset_clock() -> None:
    global _T0
    _T0 = time.monotonic()


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
