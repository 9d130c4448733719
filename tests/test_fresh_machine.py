"""The README's two commands are what CI runs: `.ci/run` only calls `make test`, and `make test` sets up the
system packages the suite needs itself (scripts/system_deps.sh), so a fresh machine needs no step by hand."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_DEPS = ROOT / "scripts" / "system_deps.sh"


def _commands(script: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in script.splitlines())
    return [line for line in lines if line]


def test_ci_runs_only_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    two_commands = readme.split("## Two commands", 1)[1].split("```", 2)[1]
    assert re.search(r"^make test\b", two_commands, re.M) and re.search(r"^make run\b", two_commands, re.M)
    commands = _commands((ROOT / ".ci" / "run").read_text())
    plain = [c for c in commands if not re.match(r"(set|cd|export) ", c)]
    assert plain == ["make test"], commands
    assert not any(re.search(r"\b(apt-get|apt|pip3?|install|curl|wget)\b", c) for c in commands), commands


def test_make_test_installs_the_system_packages_and_allows_only_gpu_skips() -> None:
    plan = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    deps = [line for line in plan.splitlines() if "scripts/system_deps.sh" in line]
    assert deps and "chromium=/usr/bin/chromium" in deps[0]
    assert re.search(r"docker-compose=docker-compose|docker compose", plan)
    first_test_step = plan.index("pytest")
    assert plan.index("scripts/system_deps.sh") < first_test_step
    assert "TESTS_ONLY_GPU_SKIPS=1" in plan[plan.rindex("\n", 0, first_test_step):first_test_step]


def _system_deps(*specs: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APT_GET": "/nonexistent/apt-get"}  # never installs anything from a test
    return subprocess.run([str(SYSTEM_DEPS), *specs], capture_output=True, text=True, env=env)


def test_system_deps_does_nothing_when_everything_is_there() -> None:
    done = _system_deps("coreutils=/bin/ls", "bash=bash")
    assert done.returncode == 0 and done.stdout == done.stderr == ""


def test_system_deps_names_what_to_install_when_it_cannot() -> None:
    done = _system_deps("coreutils=/bin/ls", "no-such-package=/nonexistent/file", "other-missing=no-such-command-x")
    assert done.returncode == 1
    assert "sudo apt-get install no-such-package other-missing" in done.stderr
    assert "coreutils" not in done.stderr
