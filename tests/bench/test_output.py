"""Benchmark outputs: checked before a run of minutes, written atomically (``lipsync_tools.bench.output``)."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import lipsync_tools.bench
import lipsync_tools.bench.output as output
from lipsync_tools.bench.output import atomic_path, check_output, check_outputs, write_atomic, write_outputs
from lipsync_tools.cli.main import app
from lipsync_tools.errors import OutputExistsError, OutputNotWritableError, UsageError


@pytest.fixture
def never_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every benchmark entry point fails the test if called: the CLI must refuse before any run."""

    def never(*_: Any, **__: Any) -> dict[str, Any]:
        raise AssertionError("the run started")

    for name in ("run_compare", "run_live", "run_soak"):
        monkeypatch.setattr(lipsync_tools.bench, name, never)


@pytest.mark.parametrize("mode", [["--compare"], ["--live"], ["--soak", "600"]])
@pytest.mark.parametrize(
    ("option", "value", "exit_code", "message"),
    [
        ("--json", "{missing}/r.json", 10, "the folder {missing} does not exist"),
        ("--markdown", "{file}/r.md", 10, "cannot be written"),
        ("--plot", "{folder}", 9, "is a folder"),
        ("--json", "{file}", 9, "already exists; pass --force"),
    ],
)
def test_an_output_that_cannot_be_written_fails_at_once_without_running(
    mode: list[str], option: str, value: str, exit_code: int, message: str, tmp_path: Path, never_run: None
):
    if option == "--plot" and mode[0] != "--compare":
        option = "--markdown"  # --plot is --compare's only
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me")
    names = {"missing": tmp_path / "no-such-folder", "file": existing, "folder": tmp_path}
    path = value.format(**names)
    started = time.perf_counter()
    cli = CliRunner().invoke(app, ["bench", *mode, option, path])
    elapsed = time.perf_counter() - started
    assert cli.exit_code == exit_code, cli.output
    flat = " ".join(cli.output.split())
    assert message.format(**names) in flat and option in flat, cli.output
    assert elapsed < 2.0, f"took {elapsed:.2f} s to refuse"
    assert existing.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt"]  # no probe or temporary file left


def test_two_outputs_on_one_path_and_the_input_as_output_are_refused(tmp_path: Path, never_run: None):
    same = tmp_path / "r.out"
    cli = CliRunner().invoke(app, ["bench", "--live", "--json", str(same), "--markdown", str(same)])
    assert cli.exit_code == 2 and "--json and --markdown both write" in " ".join(cli.output.split())
    video = tmp_path / "in.mp4"
    video.write_bytes(b"not really")
    cli = CliRunner().invoke(app, ["bench", "--live", str(video), "--json", str(video), "--force"])
    assert cli.exit_code == 2 and "is the benchmark's input" in " ".join(cli.output.split())
    assert video.read_bytes() == b"not really"


def test_force_allows_replacing_an_existing_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, soak_like: dict[str, Any]
):
    document = soak_like
    monkeypatch.setattr(lipsync_tools.bench, "run_soak", lambda options, progress=None, ticker=None: document)
    out = tmp_path / "soak.json"
    out.write_text("old")
    cli = CliRunner().invoke(app, ["bench", "--soak", "60", "--json", str(out), "--force"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(out.read_text())["kind"] == "soak"


def test_check_output_passes_stdout_none_and_a_new_file(tmp_path: Path):
    check_output("--json", None)
    check_output("--json", Path("-"))
    check_output("--json", tmp_path / "new.json")
    check_outputs({"--json": Path("-"), "--markdown": tmp_path / "a.md", "--plot": None})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputExistsError, match="is a folder"):
        check_output("--json", tmp_path)
    with pytest.raises(UsageError, match="both write"):
        check_outputs({"--json": tmp_path / "x", "--markdown": tmp_path / "x"})


def test_a_failure_while_writing_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Disk full half-way: the destination is untouched (absent, or its old content) and no temporary
    file remains in the folder."""

    def half_then_full(path: Path, payload: bytes) -> None:
        path.write_bytes(payload[: len(payload) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output, "_fill", half_then_full)
    target = tmp_path / "result.json"
    with pytest.raises(OutputNotWritableError, match=r"cannot write .*result\.json: No space left on device"):
        write_atomic(target, "x" * 10_000)
    assert list(tmp_path.iterdir()) == []
    target.write_text("the previous run")
    with pytest.raises(OutputNotWritableError):
        write_atomic(target, "y" * 10_000)
    assert target.read_text() == "the previous run"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_plot_that_fails_half_drawn_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import lipsync_tools.bench.plot as plot

    def half_drawn(result: dict[str, Any], path: Path) -> Path:
        path.write_bytes(b"\x89PNG\r\n\x1a\n half a picture")
        raise RuntimeError("the renderer failed")

    monkeypatch.setattr(plot, "write_plot", half_drawn)
    with pytest.raises(RuntimeError, match="renderer failed"):
        write_outputs({"kind": "x"}, plot_path=tmp_path / "plot.png")
    assert list(tmp_path.iterdir()) == []


def test_files_are_written_whole_with_ordinary_permissions(tmp_path: Path):
    import os

    target = tmp_path / "r.md"
    write_atomic(target, "# tables\n")
    assert target.read_text() == "# tables\n"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    with atomic_path(tmp_path / "p.bin") as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".p.bin.")
        temp.write_bytes(b"abc")
    assert (tmp_path / "p.bin").read_bytes() == b"abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.bin", "r.md"]
