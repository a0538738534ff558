"""Every command and script the READMEs name answers `--help` (exit 0, a usage line): help text is code too, and
argparse formats it only when asked."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hypercheckout.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += subcommands(child, (*path, name))
    return found


@pytest.mark.parametrize("command", subcommands(build_parser()), ids=lambda c: " ".join(c) or "hypercheckout")
def test_every_cli_command_answers_help(command: tuple[str, ...]) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        build_parser().parse_args([*command, "--help"])
    assert done.value.code == 0 and out.getvalue().startswith("usage: hypercheckout"), out.getvalue()


# Named as load-tests/x.py or as x.py alone: every such name that is a script in load-tests/ (locustfile.py is
# Locust's input, not a command).
SCRIPTS = sorted({f"load-tests/{name}" for readme in (ROOT / "README.md", ROOT / "load-tests" / "README.md")
                  for name in re.findall(r"\b([a-z_]+\.py)\b", readme.read_text())
                  if (ROOT / "load-tests" / name).is_file()
                  and 'if __name__ == "__main__"' in (ROOT / "load-tests" / name).read_text()})


def test_the_readmes_name_scripts() -> None:
    assert {"load-tests/chaos.py", "load-tests/run.py", "load-tests/bench.py"} <= set(SCRIPTS), SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_the_readmes_name_answers_help(script: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: "), done.stdout + done.stderr
