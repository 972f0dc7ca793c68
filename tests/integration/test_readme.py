"""Every code block of README.md runs as written, so an example can never rot.

Blocks are run against a real embedded valkey server and a real worker serving the README's
model (SmolLM2-135M-Instruct), with ``TOKENRELAY_REDIS_URL`` pointing at them:
- ```python blocks run in a fresh interpreter;
- ```bash blocks run in ``bash -euo pipefail`` with the venv's ``tokenrelay`` on PATH;
- a block right after ``<!-- not run: REASON -->`` (an HTML comment: invisible on GitHub) is
  not run; only blocks that cannot run here (Docker, a GPU, the whole test suite) say so;
- every ``tokenrelay CMD --flag`` in a shell block, run or not, names a command and flags the
  command line really has.

A block in any other language fails :func:`test_every_block_runs_or_says_why_not` until a
runner for it joins ``RUNNERS`` (or it says why it is not run).  Examples that need more than
Redis and a worker (the gateway's curl/openai ones) add what they need to ``readme_env``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.main import build_parser
from tests.support.gateway_process import gateway_process, wait_for_worker
from workers.launcher import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```([\w-]*)\s*$")
SHELLS = ("bash", "sh", "shell", "console")
BLOCK_TIMEOUT_S = 240


@dataclass(frozen=True)
class Block:
    lang: str  # "" for an untagged block (diagrams, sample output): never run
    code: str
    line: int  # of the opening fence, 1-based
    not_run: str | None  # the reason given in a `<!-- not run: ... -->` right before it

    @property
    def name(self) -> str:
        return f"README.md:{self.line}:{self.lang or 'text'}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        reason = NOT_RUN.match(before)
        blocks.append(Block(fence.group(1), "\n".join(lines[i + 1 : end]) + "\n", i + 1, reason and reason.group(1)))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


# -- running a block -----------------------------------------------------------------------------


def run_python(block: Block, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", block.code], env=env, cwd=cwd, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )


def run_shell(block: Block, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )


Runner = Callable[[Block, dict[str, str], Path], subprocess.CompletedProcess[str]]
RUNNERS: dict[str, Runner] = {"python": run_python, **dict.fromkeys(SHELLS, run_shell)}


@pytest.fixture(scope="module")
def readme_env(smol_stack: Stack) -> Iterator[dict[str, str]]:
    """What a reader of the README has: a server, a worker, ``tokenrelay`` on PATH, and no
    other TOKENRELAY_* setting of this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENRELAY_")}
    env |= {
        "TOKENRELAY_REDIS_URL": smol_stack.url,
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    # The gateway's examples (curl, openai) talk to a real `tokenrelay serve` at $GATEWAY.
    with gateway_process(smol_stack.url) as base:
        wait_for_worker(base)
        yield env | {"GATEWAY": base}


def runnable() -> list[Block]:
    return [b for b in BLOCKS if b.lang in RUNNERS and b.not_run is None]


def test_the_readme_has_runnable_examples() -> None:
    langs = [b.lang for b in runnable()]
    assert langs.count("python") >= 2 and any(lang in SHELLS for lang in langs)


def test_every_block_runs_or_says_why_not() -> None:
    orphans = [b.name for b in BLOCKS if b.lang and b.lang not in RUNNERS and b.not_run is None]
    assert orphans == [], "add a runner to RUNNERS, or put <!-- not run: REASON --> right before the block"


@pytest.mark.parametrize("block", runnable(), ids=lambda b: b.name)
def test_example_runs(block: Block, readme_env: dict[str, str], tmp_path: Path) -> None:
    proc = RUNNERS[block.lang](block, readme_env, tmp_path)
    assert proc.returncode == 0, f"{block.name} failed:\n{block.code}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.strip(), f"{block.name} printed nothing"


# -- tokenrelay command lines --------------------------------------------------------------------


def command_lines(code: str) -> list[str]:
    """Shell lines with their continuations (indented lines, trailing backslashes) joined and
    comments dropped."""
    joined: list[str] = []
    for raw in code.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if joined and raw[:1].isspace():
            joined[-1] += " " + line.strip()
        elif line:
            joined.append(line)
    return joined


def tokenrelay_calls(code: str) -> list[tuple[str, list[str]]]:
    """``(command, flags)`` of every ``tokenrelay COMMAND ...`` in a shell block (pipes,
    ``$(...)``, ``;`` and ``&&`` separate calls)."""
    calls = []
    for line in command_lines(code):
        for segment in re.split(r"\||;|&&|\$\(|\)", line):
            found = re.search(r"(?:^|\s)tokenrelay\s+([a-z][\w-]*)(.*)$", segment)
            if found:
                calls.append((found.group(1), re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", found.group(2))))
    return calls


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in SHELLS], ids=lambda b: b.name)
def test_tokenrelay_commands_and_flags_exist(block: Block) -> None:
    commands = subcommands()
    for command, flags in tokenrelay_calls(block.code):
        assert command in commands, f"{block.name}: `tokenrelay {command}` is no command"
        unknown = set(flags) - options_of(commands[command])
        assert not unknown, f"{block.name}: `tokenrelay {command}` has no {sorted(unknown)}"


def test_the_flag_check_catches_a_wrong_flag() -> None:
    code = 'rid=$(tokenrelay submit "x" --max-tokens 4) | tail -n 1\ntokenrelay tail "$rid" --aftr 1-0\n'
    calls = tokenrelay_calls(code)
    assert calls == [("submit", ["--max-tokens"]), ("tail", ["--aftr"])]
    assert "--aftr" not in options_of(subcommands()["tail"])
