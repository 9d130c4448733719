"""Which process owns a job or a staging folder, and whether that process still runs.

A pid alone is not enough: after a crash and restart, a container's server is pid 1 again, and pids are
reused. An owner token is `<pid>-<start time>` (the process start time in clock ticks since boot, from
`/proc/<pid>/stat`), so a restarted process never mistakes a dead predecessor's work for its own.
"""

from __future__ import annotations

import os
from functools import cache


def _start_ticks(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks after boot); None when it does not exist. 0 where
    there is no `/proc` (the token then degrades to the pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else _pid_only(pid)
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: fields after the last ')'
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])  # field 22 of the whole line: starttime


def _pid_only(pid: int) -> int | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return 0
    return 0


@cache
def _token_of(pid: int) -> str:
    return f"{pid}-{_start_ticks(pid) or 0}"


def current_owner() -> str:
    """This process's owner token (stable for its life)."""
    return _token_of(os.getpid())


def owner_alive(token: str) -> bool:
    """Whether the process that wrote `token` still runs (a malformed token counts as dead)."""
    pid_text, _, ticks_text = token.partition("-")
    if not (pid_text.isdigit() and ticks_text.isdigit()):
        return False
    ticks = _start_ticks(int(pid_text))
    return ticks is not None and ticks == int(ticks_text)
