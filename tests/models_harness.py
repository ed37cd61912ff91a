"""Helpers for tests of `wan-worker models`: the command in this process or in one of its own, and
its JSON lines."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

import pytest

from conftest import REPO_ROOT, worker_command
from worker.cli import build_parser
from worker.config import load_config

TINY_REPO = "wan-worker/tiny-models"  # the hub repo the tiny definitions name


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def models(capsys: pytest.CaptureFixture, *args: str) -> Ran:
    """`wan-worker models ...` in this process (stdout is not a terminal: JSON lines); as main() runs it,
    except that the test session's logging is left alone."""
    parsed = build_parser().parse_args(["models", *args])
    code = parsed.subcommand.resolve()(parsed, load_config(parsed))
    out = capsys.readouterr()
    return Ran(code, out.out, out.err)


def models_process(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """`wan-worker models ...` in a process of its own."""
    return subprocess.Popen(worker_command("models", *args), cwd=REPO_ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]
