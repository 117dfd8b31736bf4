#!/usr/bin/env python3
"""Wait until the server's /health answers 200, failing fast when its start fails.

    llf_wait_health.py URL TIMEOUT_S -- STATUS_COMMAND...

STATUS_COMMAND is run every few seconds. Its output tells whether the service gave up
(supervisor: FATAL, EXITED, BACKOFF; systemd: ActiveState=failed) and which start this
is (supervisor: `pid N`; systemd: `NRestarts=N`). Both managers restart the server after
any exit, so a start that can never succeed shows up as a new pid or a higher restart
count: waiting stops at the first one instead of running out the timeout.
Exit 0 ready, 1 not ready, 2 usage.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

DEAD = ("FATAL", "EXITED", "BACKOFF", "ActiveState=failed")
START = re.compile(r"\bpid (\d+)|^NRestarts=(\d+)$", re.MULTILINE)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own server
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def service_state(command: list[str]) -> str:
    if not command:
        return ""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return (result.stdout + result.stderr).strip()


def start_of(state: str) -> str | None:
    """Which start of the service this is: its pid (supervisor) or restart count (systemd)."""
    match = START.search(state)
    return (match.group(1) or match.group(2)) if match else None


def wait(url: str, timeout: float, command: list[str], interval: float = 2.0) -> int:
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    first: str | None = None
    while time.monotonic() < deadline:
        if healthy(url):
            print(f"{url} answered 200 after {time.monotonic() - started:.0f} s")
            return 0
        state = service_state(command)
        if any(word in state for word in DEAD):
            print(f"the service stopped trying after {time.monotonic() - started:.0f} s, before {url} answered: "
                  f"{' '.join(state.split())}", file=sys.stderr)
            return 1
        start = start_of(state)
        if first is None:
            first = start
        elif start is not None and start != first:
            print(f"the server exited while starting and was started again after {time.monotonic() - started:.0f} s "
                  f"({' '.join(state.split())}): its start fails", file=sys.stderr)
            return 1
        time.sleep(interval)
    print(f"{url} did not answer 200 within {timeout:.0f} s", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    command = argv[3:] if len(argv) > 2 and argv[2] == "--" else []
    return wait(argv[0], float(argv[1]), command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
