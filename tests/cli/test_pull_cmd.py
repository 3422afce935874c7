"""``lipsync pull`` as a user runs it, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lipsync_tools.cli import pull_cmd  # noqa: F401  (registers `lipsync pull` until cli/main.py imports it)
from lipsync_tools.cli.main import app
from tests.remote.http_server import LoopbackServer, Reply, loopback_server

runner = CliRunner()
BODY = random.Random(2).randbytes(200_000)
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with loopback_server() as s:
        yield s


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_pull_json_then_skip(server, tmp_path):
    url = server.route("/avatars/alice.sanders", Reply(BODY))
    result = runner.invoke(app, ["pull", url, "--sha256", SHA, "-o", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["sha256"] == SHA and summary["bytes"] == len(BODY)
    assert summary["path"] == str(tmp_path / "alice.sanders") and not summary["skipped"]
    assert listing(tmp_path) == ["alice.sanders"]
    again = runner.invoke(app, ["pull", url, "--sha256", SHA, "-o", str(tmp_path)])
    assert again.exit_code == 0 and "already there" in again.stderr and len(server.log) == 1


def test_pull_prints_one_summary_line_and_no_bar_when_piped(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = server.route("/a.pth", Reply(BODY))
    result = runner.invoke(app, ["pull", url])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"pulled {tmp_path / 'a.pth'}: 195.3 KiB in ") and SHA in result.stderr
    quiet = runner.invoke(app, ["pull", url, "-o", str(tmp_path / "b.pth"), "-q"])
    assert quiet.exit_code == 0 and quiet.output == ""


def test_resume_is_reported(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY, send=50_000), Reply(BODY))
    first = runner.invoke(app, ["pull", url, "-o", str(tmp_path), "--sha256", SHA])
    assert first.exit_code == 19 and "run again to resume" in first.stderr
    second = runner.invoke(app, ["pull", url, "-o", str(tmp_path), "--sha256", SHA])
    assert second.exit_code == 0 and "resumed after 48.8 KiB" in second.stderr
    assert listing(tmp_path) == ["a.bin"]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--sha256", "b" * 64], 19, "not the expected " + "b" * 64),
        (["--max-size", "1000"], 19, "over the 1000 B limit"),
        (["--max-size", "8 G"], 2, "invalid size '8 G'"),
        (["--sha256", "xyz"], 2, "is not 64 hexadecimal digits"),
    ],
)
def test_failures_are_one_line_with_their_exit_code_and_leave_nothing(server, tmp_path, args, code, words):
    url = server.route("/a.bin", Reply(BODY))
    result = runner.invoke(app, ["pull", url, "-o", str(tmp_path), *args])
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and words in result.stderr
    assert listing(tmp_path) == []


def test_http_error_json(server, tmp_path):
    result = runner.invoke(app, ["pull", server.url("/missing.bin"), "-o", str(tmp_path), "--json"])
    assert result.exit_code == 19
    error = json.loads(result.stdout)
    assert error["ok"] is False and error["error"] == "DownloadError" and "HTTP 404" in error["message"]


def test_other_schemes_are_refused(tmp_path):
    result = runner.invoke(app, ["pull", "file:///etc/passwd", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "only http:// and https://" in result.stderr
    assert listing(tmp_path) == []


def test_existing_file_needs_force(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY))
    (tmp_path / "a.bin").write_bytes(b"old")
    result = runner.invoke(app, ["pull", url, "-o", str(tmp_path)])
    assert result.exit_code == 9 and "pass --force" in result.stderr
    assert runner.invoke(app, ["pull", url, "-o", str(tmp_path), "--force"]).exit_code == 0
    assert (tmp_path / "a.bin").read_bytes() == BODY
