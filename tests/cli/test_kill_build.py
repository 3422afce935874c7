"""SIGKILL a real ``lipsync build-package`` at several points and check what is left (issue 11).

Nothing can clean up after SIGKILL, so what is promised is only this: the output path never holds a file
that is not a complete package; a hidden ``.NAME.sanders.PID.tmp`` may stay behind; and the same command,
run again without ``--force``, succeeds and is not blocked by it.

Points inside the build are hit exactly by a small launcher that runs the very same ``python -m
lipsync_tools`` entry point, after wrapping one function so that the process SIGKILLs itself when it
reaches that point (a SIGKILL is the same whoever sends it). The build killed while writing frames is the
plain command, killed from outside by the test once its temporary file is seen growing. The four builds
run at once (each spends most of its time starting up), the three that must not finish into one shared
output path, so the rerun also meets the stale temporary files of two dead processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lipsync_tools.cli.main import app
from lipsync_tools.errors import LipsyncError
from lipsync_tools.package import validate_package
from tests import samples

pytestmark = pytest.mark.slow

N_FRAMES = 100  # 4 s: the frames are written over ~0.3 s, time enough to be killed from outside
CROPS_BYTES = N_FRAMES * 96 * 96 * 3  # the crops dataset (Wav2Lip's 96 px), allocated before frame 0
TIMEOUT_S = 120
runner = CliRunner()

# Runs `python -m lipsync_tools ARGS` after arming one kill point, named by LIPSYNC_TEST_KILL_AT:
#   detect:N   the N-th face detection call (finding faces; no package file exists yet)
#   rename     the rename of the finished, fsync-ed temporary file over the output path, before it happens
#   renamed    the same rename, just after it, before the folder is fsync-ed
LAUNCHER = r"""
import os, runpy, signal
from pathlib import Path

point, _, arg = os.environ["LIPSYNC_TEST_KILL_AT"].partition(":")
output = Path(os.environ["LIPSYNC_TEST_OUTPUT"])

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "detect":
    import lipsync_tools.pipeline.build as build
    real_detect, calls = build.detect_in_copy, [0]
    def detect_in_copy(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(arg):
            die()
        return real_detect(*args, **kwargs)
    build.detect_in_copy = detect_in_copy
elif point in ("rename", "renamed"):
    real_replace = os.replace
    def replace(src, dst, **kwargs):
        if Path(dst) == output and point == "rename":
            die()
        real_replace(src, dst, **kwargs)
        if Path(dst) == output:
            die()
    os.replace = replace
else:
    raise SystemExit(f"unknown kill point {point!r}")

runpy.run_module("lipsync_tools", run_name="__main__", alter_sys=True)
"""


def build_command(video: Path, out: Path) -> list[str]:
    return ["build-package", str(video), "-o", str(out)]


def start(args: list[str], kill_at: str | None = None, out: Path | None = None) -> subprocess.Popen[bytes]:
    """``python -m lipsync_tools ARGS`` as a user runs it, or through the launcher armed at ``kill_at``."""
    env = {**os.environ, "CI": "true"}
    if kill_at is None:
        command = [sys.executable, "-m", "lipsync_tools", *args]
    else:
        command = [sys.executable, "-c", LAUNCHER, *args]
        env |= {"LIPSYNC_TEST_KILL_AT": kill_at, "LIPSYNC_TEST_OUTPUT": str(out)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def lipsync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lipsync_tools", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "CI": "true"},
        timeout=TIMEOUT_S,
    )


def temp_of(out: Path, pid: int) -> Path:
    return out.with_name(f".{out.name}.{pid}.tmp")


def is_valid_package(path: Path) -> bool:
    try:
        return validate_package(path) == []
    except (LipsyncError, OSError, KeyError):  # h5py raises KeyError on some half-written object headers
        return False


@dataclass(frozen=True)
class Killed:
    """What one killed build left behind, looked at the moment it was dead."""

    pid: int
    returncode: int
    stderr: str
    temp: Path
    temp_present: bool
    temp_valid: bool  # a complete package, though under the hidden name
    temp_size: int
    output_present: bool
    output_valid: bool


def observe(proc: subprocess.Popen[bytes], out: Path) -> Killed:
    _, stderr = proc.communicate(timeout=TIMEOUT_S)
    temp = temp_of(out, proc.pid)
    return Killed(
        pid=proc.pid,
        returncode=proc.returncode,
        stderr=stderr.decode(errors="replace"),
        temp=temp,
        temp_present=temp.exists(),
        temp_valid=temp.exists() and is_valid_package(temp),
        temp_size=temp.stat().st_size if temp.exists() else 0,
        output_present=out.exists(),
        output_valid=out.exists() and is_valid_package(out),
    )


def kill_while_writing(proc: subprocess.Popen[bytes], out: Path) -> list[int]:
    """SIGKILL ``proc`` from outside once its temporary file holds the crops array and has grown twice more
    (frames are being written; the package is far from complete). Returns the sizes seen."""
    temp = temp_of(out, proc.pid)
    deadline = time.monotonic() + TIMEOUT_S
    sizes: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            size = temp.stat().st_size
        except FileNotFoundError:
            size = 0
        if size > CROPS_BYTES and (not sizes or size > sizes[-1]):
            sizes.append(size)
        if len(sizes) >= 3:
            proc.send_signal(signal.SIGKILL)
            return sizes
        time.sleep(0.002)
    pytest.fail(f"the build ended (exit {proc.poll()}) before its temporary file was seen growing: {sizes}")


@dataclass(frozen=True)
class KillRun:
    video: Path
    shared_out: Path  # three killed builds, none of them got as far as the rename
    renamed_out: Path  # the build killed just after its rename
    killed: dict[str, Killed]


@pytest.fixture(scope="module")
def kill_run(tmp_path_factory: pytest.TempPathFactory) -> KillRun:
    root = tmp_path_factory.mktemp("kill")
    video = samples.long_shot_video(root / "long.mp4", n_frames=N_FRAMES)
    (root / "shared").mkdir()
    (root / "renamed").mkdir()
    shared_out, renamed_out = root / "shared" / "long.sanders", root / "renamed" / "long.sanders"
    procs = {
        "finding-faces": (start(build_command(video, shared_out), "detect:20", shared_out), shared_out),
        "before-rename": (start(build_command(video, shared_out), "rename", shared_out), shared_out),
        "after-rename": (start(build_command(video, renamed_out), "renamed", renamed_out), renamed_out),
        "writing-frames": (start(build_command(video, shared_out)), shared_out),  # no hook: killed below
    }
    try:
        kill_while_writing(procs["writing-frames"][0], shared_out)
        killed = {name: observe(proc, out) for name, (proc, out) in procs.items()}
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, k in killed.items():
        assert k.returncode == -signal.SIGKILL, f"{name}: exit {k.returncode}, not killed: {k.stderr}"
    return KillRun(video, shared_out, renamed_out, killed)


def test_killed_while_finding_faces_leaves_nothing(kill_run: KillRun):
    k = kill_run.killed["finding-faces"]
    assert not k.temp_present and not k.output_present


def test_killed_while_writing_frames_leaves_only_a_hidden_unreadable_temporary_file(kill_run: KillRun):
    """The plain ``python -m lipsync_tools build-package``, SIGKILL-ed by the test amid the frames."""
    k = kill_run.killed["writing-frames"]
    assert k.temp_present and not k.temp_valid
    assert not k.output_present


def test_killed_just_before_the_rename_leaves_the_output_path_empty(kill_run: KillRun):
    """The package was complete and fsync-ed, but under its hidden name: nothing at the output path."""
    k = kill_run.killed["before-rename"]
    assert k.temp_present and k.temp_valid
    assert not k.output_present


def test_killed_just_after_the_rename_leaves_a_complete_package(kill_run: KillRun):
    """Only the folder's fsync was missing: the package is whole, so a rerun without --force refuses."""
    k = kill_run.killed["after-rename"]
    assert not k.temp_present
    assert k.output_present and k.output_valid
    again = runner.invoke(app, build_command(kill_run.video, kill_run.renamed_out))
    assert again.exit_code == 9 and "already exists" in again.output, again.output


def test_rerun_after_the_kills_succeeds_and_validates(kill_run: KillRun):
    """The same command, without --force, next to killed builds' leftovers: not blocked by them."""
    out = kill_run.shared_out
    stale = {k.temp: k.temp_size for k in kill_run.killed.values() if k.temp_present}
    assert all(temp.parent == out.parent for temp in stale)  # the after-rename build left none
    assert len(stale) == 2  # writing-frames, before-rename

    rerun = lipsync(*build_command(kill_run.video, out))
    assert rerun.returncode == 0, rerun.stderr
    validated = runner.invoke(app, ["validate", str(out)])
    assert validated.exit_code == 0, validated.output
    # the leftovers of dead processes are untouched (nothing can tell a dead build's file from a live one's)
    assert {p: p.stat().st_size for p in stale} == stale
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, *(p.name for p in stale)])
