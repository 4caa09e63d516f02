"""``handgrad train --processes N``: N processes of the same command on this machine, joined by jax.distributed.

Each is ``python -m handgrad.cli`` with the command line it was given, less ``--processes``, plus
``--coordinator 127.0.0.1:PORT --num-processes N --process-id I`` on a free local port. Process 0 prints; the
others' output is dropped but for errors. When one fails, the others are stopped (they would wait for it in a
collective forever), and the command exits with the first failure's code.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

POLL = 0.05  # seconds between looks at the processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the operating system's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def without(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag VALUE`` and ``flag=VALUE``."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith(f"{flag}="):
            skip = False
            continue
        if arg == flag:
            skip = True
            continue
        kept.append(arg)
    return kept


def local(argv: list[str], count: int, *, coordinator: str | None = None) -> int:
    """Runs ``handgrad *argv`` as ``count`` processes joined through a free local port; returns the exit code
    (2, with one line on stderr, for a count below 1 or a ``coordinator`` given as well)."""
    if count < 1 or coordinator:
        why = (f"--processes must be ≥ 1, got {count}" if count < 1 else
               "--processes starts its own coordinator; it does not combine with --coordinator")
        print(f"handgrad train: {why}", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "handgrad.cli", *without(argv, "--processes"), "--coordinator",
               f"127.0.0.1:{free_port()}", "--num-processes", str(count)]
    procs = [subprocess.Popen([*command, "--process-id", str(i)], stdout=None if i == 0 else subprocess.DEVNULL)
             for i in range(count)]
    failed = 0
    while any(p.poll() is None for p in procs):
        if not failed:
            failed = next((p.returncode for p in procs if p.returncode), 0)
            if failed:
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
        time.sleep(POLL)
    code = failed or next((p.returncode for p in procs if p.returncode), 0)
    return code if code >= 0 else 128 - code  # killed by signal S: 128 + S, as a shell says it
