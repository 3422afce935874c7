"""``lipsync bench --live`` run small: real server process, real sessions, the document's invariants.

Behaviour only (counts, timelines, schema, refusals); no time is asserted: the machine may be shared, and
the lags are the benchmark's job to report. The server runs ``--model identity`` (no network), so the
sessions do not depend on the machine keeping up with a real model.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import lipsync_tools.bench
from lipsync_tools.bench import LiveOptions, SchemaError, check_result, load_schema, run_live, to_markdown
from lipsync_tools.bench.live import LiveLaunch, SessionRecord, _feed, _looped, lag_stats
from lipsync_tools.cli.main import app
from lipsync_tools.errors import UsageError


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One work folder for the module: the package is built once and reused by every run."""
    return tmp_path_factory.mktemp("live")


@pytest.fixture(scope="module")
def result(talking_head_mp4: Path, work: Path) -> dict[str, Any]:
    """One real run: 1 and 2 sessions of 2 s, then a 5 s drift session (about 25 s in all)."""
    options = LiveOptions(
        input=talking_head_mp4,
        model="identity",
        sessions=(1, 2),
        session_seconds=2.0,
        drift_seconds=5.0,
        warmup_seconds=1.0,
        settle_seconds=0.2,
        work_dir=work,
    )
    messages: list[str] = []
    document = run_live(options, progress=messages.append)
    assert any("drift" in m for m in messages)
    return document


@pytest.mark.slow
def test_the_run_follows_the_schema_and_every_frame_is_accounted_for(result: dict[str, Any]):
    check_result(result)  # dispatches on "kind": "live"
    check_result(result, load_schema("live"))
    json.loads(json.dumps(result))  # JSON-ready, no NumPy scalars
    assert result["kind"] == "live" and result["input"]["fps"] > 0 and result["input"]["speech_seconds"] > 0
    assert result["server"]["capacity"]["batch_ms"] and result["server"]["options"]["max_sessions"] == 32
    assert result["runtime"]["precision"] == "fp32" and result["runtime"]["device"] == "cpu"
    # --model identity runs no network: neither live goal is measured by this run
    goals = result["goals"]
    assert all(g["met"] is None for g in goals.values())
    assert "--model identity runs no network" in goals["wav2lip_int8_two_sessions"]["reason"]
    assert "needs a synctalk2d-328 one" in goals["synctalk2d_328_one_session"]["reason"]
    assert [p["sessions"] for p in result["points"]] == [1, 2]
    fps = result["input"]["fps"]
    for point in result["points"]:
        assert point["admitted"] + point["refused"] == point["sessions"]
        assert point["admitted"] == len(point["per_session"]) >= 1
        assert point["errors"] == 0
        for s in point["per_session"]:
            assert s["error"] is None and s["timeline_errors"] == 0
            assert s["frames_expected"] == int(np.ceil(s["audio_seconds"] * fps - 1e-9))
            assert s["frames_sent"] + s["frames_dropped"] == s["frames_expected"]
            assert s["frames_received"] == s["frames_sent"] > 0
            assert s["max_lag_ms"] > 0 and 0 <= s["over_bound"] <= s["frames_received"]
            assert s["lag_ms"]["median"] is not None and s["lag_ms"]["max"] >= s["lag_ms"]["median"]
            assert s["held"] == (s["over_bound"] == 0 and s["delivered_fps"] >= 25)
        offsets = [s["offset_seconds"] for s in point["per_session"]]
        assert len(set(offsets)) == len(offsets)  # each session says another part of the speech
        assert point["over_bound"] == sum(s["over_bound"] for s in point["per_session"])
        assert point["held"] == sum(s["held"] for s in point["per_session"])
    drift = result["drift"]
    assert drift["seconds"] == 5.0 and drift["error"] is None and drift["timeline_errors"] == 0
    assert drift["drift_frames"] == 0
    assert -drift["frames_dropped"] <= drift["timeline_drift_frames"] <= 0
    assert (
        drift["lag_ms_first_10pct"]["median"] is not None and drift["lag_ms_last_10pct"]["median"] is not None
    )


@pytest.mark.slow
def test_markdown_has_the_points_table_and_the_drift(result: dict[str, Any]):
    markdown = to_markdown(result)
    for needle in (
        "| sessions | admitted / refused | delivered fps (median session) | lag median / p99 ms",
        "over bound (SessionStarted.max_lag_ms)",
        "Drift: one session of 5 s",
        "drift over 5 s: 0 frames",
        "| 2 | 2 / 0 |",
        "capacity",
    ):
        assert needle in markdown


@pytest.mark.slow
def test_a_session_over_the_servers_limit_is_refused_and_counted(talking_head_mp4: Path, work: Path):
    options = LiveOptions(
        input=talking_head_mp4,
        model="identity",
        sessions=(2,),
        session_seconds=1.0,
        drift_seconds=0,
        warmup_seconds=0,
        max_sessions=1,
        work_dir=work,
    )
    document = run_live(options)
    check_result(document)
    [point] = document["points"]
    assert (point["admitted"], point["refused"]) == (1, 1)
    assert "overloaded" in point["refusal"] and "retry" in point["refusal"]
    assert "--max-sessions 1" in point["refusal"]
    [session] = point["per_session"]
    assert session["frames_sent"] + session["frames_dropped"] == session["frames_expected"]
    assert document["drift"] is None and document["server"]["options"]["max_sessions"] == 1
    assert document["server"]["sessions_after"]["refused"] >= 1
    assert "first refusal (at 2 sessions): overloaded" in to_markdown(document)


def test_the_microphone_sends_each_chunk_once_it_is_captured():
    """Chunk n of 20 ms goes out no earlier than t_start + 20 (n + 1) ms, in order, every sample once."""

    class FakeSession:
        def __init__(self) -> None:
            self.sent: list[tuple[float, bytes]] = []
            self.ended = False

        async def send_audio(self, pcm: memoryview, chunk_seconds: float) -> None:
            self.sent.append((time.monotonic(), bytes(pcm)))

        async def end(self) -> None:
            self.ended = True

    pcm = np.arange(1000, dtype=np.int16)  # 62.5 ms: three full chunks and a partial one
    session = FakeSession()
    record = SessionRecord(index=0, offset_samples=0, samples=pcm.size)
    t_start = time.monotonic()
    asyncio.run(_feed(session, pcm.astype("<i2").tobytes(), t_start, 0.02, record))
    assert session.ended and [len(chunk) for _, chunk in session.sent] == [640, 640, 640, 80]
    assert b"".join(chunk for _, chunk in session.sent) == pcm.astype("<i2").tobytes()
    for n, (sent_at, _) in enumerate(session.sent):
        assert sent_at >= t_start + min(0.02 * (n + 1), pcm.size / 16000)
    assert record.send_late_max >= record.start_late >= 0


def test_speech_is_looped_from_each_offset():
    speech = np.arange(10, dtype=np.int16)
    assert _looped(speech, 0, 4).tolist() == [0, 1, 2, 3]
    assert _looped(speech, 7, 25).tolist() == [7, 8, 9, *range(10), *range(10), 0, 1]


def test_lag_statistics():
    assert lag_stats([]) == {"median": None, "p90": None, "p99": None, "max": None}
    stats = lag_stats([10.0, 20.0, 30.0])
    assert stats["median"] == 20.0 and stats["max"] == 30.0 and 20.0 <= stats["p90"] <= stats["p99"] <= 30.0


def test_frames_expected_counts_like_render():
    record = SessionRecord(index=0, offset_samples=0, samples=32000, fps=25.0)
    assert record.frames_expected == 50
    record.samples = 32001
    assert record.frames_expected == 51


def test_server_command_runs_the_chosen_model_with_the_serve_options(tmp_path: Path):
    launch = LiveLaunch(
        name="live",
        kind="package",
        package_id="avatar",
        path=Path("v.sanders"),
        seed=2,
        backend="onnx",
        log_dir=tmp_path,
        model="identity",
        serve_options=("--min-session-fps", "25", "--max-sessions", "3"),
    )
    cmd = launch.command()
    assert cmd[cmd.index("--model") + 1] == "identity" and cmd[cmd.index("--seed") + 1] == "2"
    assert cmd[cmd.index("--min-session-fps") + 1] == "25" and cmd[cmd.index("--max-sessions") + 1] == "3"
    assert cmd[-1] == "avatar=v.sanders" and cmd[cmd.index("--port") + 1] == "0"


@pytest.mark.slow
def test_crop_jpeg_sessions_send_a_fraction_of_the_full_frame_bytes(
    talking_head_mp4: Path, work: Path, result: dict[str, Any]
):
    options = LiveOptions(input=talking_head_mp4, model="identity", sessions=(1,), session_seconds=2.0,
                          drift_seconds=0, warmup_seconds=0, image="crop_jpeg", work_dir=work)
    document = run_live(options)
    check_result(document)
    [crop] = document["points"][0]["per_session"]
    full = result["points"][0]["per_session"][0]  # the module's run: full JPEG frames
    assert crop["bytes_per_frame"] is not None and full["bytes_per_frame"] is not None
    assert crop["bytes_per_frame"] < full["bytes_per_frame"]
    assert crop["encode_ms"] is not None and document["settings"]["image"] == "crop_jpeg"
    assert "images: crop_jpeg" in to_markdown(document)


def test_options_are_checked():
    for bad in (
        {"sessions": ()},
        {"sessions": (0,)},
        {"sessions": (1, 1)},
        {"sessions": (65,)},
        {"session_seconds": 0.1},
        {"drift_seconds": -1},
        {"drift_seconds": 0.5},
        {"model": "wav2lip"},
        {"backend": "tensorrt"},
        {"min_session_fps": 0},
        {"max_sessions": 0},
        {"chunk_ms": 1},
        {"image": "png"},
    ):
        with pytest.raises(UsageError):
            LiveOptions(**bad)
    quick = LiveOptions.quick()
    assert quick.sessions == (1, 2, 4, 8) and quick.session_seconds == 5 and quick.drift_seconds == 60
    assert LiveOptions(drift_seconds=0).drift_seconds == 0  # 0 skips the drift run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--live", "--compare"], "not both"),
        (["--live", "--sessions", "one"], "--sessions 'one'"),
        (["--live", "--sessions", "0,2"], "1..64"),
        (["--live", "--drift-seconds", "-5"], "--drift-seconds"),
        (["--live", "--frames", "3"], "--frames does not apply to --live"),
        (["--live", "--plot", "p.png"], "--plot does not apply to --live"),
        (["--compare", "--sessions", "1"], "--sessions does not apply to --compare"),
        (["--compare", "--model", "identity"], "--model does not apply to --compare"),
    ],
)
def test_cli_refuses_bad_options_before_any_work(args: list[str], message: str, monkeypatch):
    def never(*_: Any, **__: Any) -> dict[str, Any]:
        raise AssertionError("the run started")

    monkeypatch.setattr(lipsync_tools.bench, "run_live", never)
    monkeypatch.setattr(lipsync_tools.bench, "run_compare", never)
    cli = CliRunner().invoke(app, ["bench", *args])
    assert cli.exit_code == 2, cli.output
    assert message in " ".join(cli.output.split()), cli.output


def test_cli_passes_live_options_and_writes_json_and_markdown(
    live_like: dict[str, Any], tmp_path: Path, monkeypatch
):
    seen: list[LiveOptions] = []

    def fake_run(options: LiveOptions, progress: Any = None) -> dict[str, Any]:
        seen.append(options)
        return live_like

    monkeypatch.setattr(lipsync_tools.bench, "run_live", fake_run)
    out, md = tmp_path / "live.json", tmp_path / "live.md"
    cli = CliRunner().invoke(
        app,
        [
            "bench",
            "--live",
            "--quick",
            "--sessions",
            "1,3",
            "--drift-seconds",
            "0",
            "--min-session-fps",
            "25",
            "--max-sessions",
            "4",
            "--model",
            "identity",
            "--json",
            str(out),
            "--markdown",
            str(md),
        ],
    )
    assert cli.exit_code == 0, cli.output
    check_result(json.loads(out.read_text()))
    assert "Live sessions at the speed of speech" in cli.output and "| 1 | 1 / 0 |" in md.read_text()
    [options] = seen
    assert options.sessions == (1, 3) and options.drift_seconds == 0 and options.session_seconds == 5
    assert (options.min_session_fps, options.max_sessions, options.model) == (25, 4, "identity")
    cli = CliRunner().invoke(app, ["bench", "--live", "--json", "-"])
    assert cli.exit_code == 0 and json.loads(cli.stdout)["kind"] == "live"


def test_live_schema_errors_name_the_place(live_like: dict[str, Any]):
    check_result(live_like)
    broken = copy.deepcopy(live_like)
    del broken["points"][0]["per_session"][0]["frames_dropped"]
    with pytest.raises(SchemaError, match=r"result.points\[0\].per_session\[0\] lacks frames_dropped"):
        check_result(broken)
    broken = copy.deepcopy(live_like)
    broken["drift"] = {"seconds": 60}
    with pytest.raises(SchemaError, match=r"result.drift lacks"):
        check_result(broken)
    broken = copy.deepcopy(live_like)
    broken["schema_version"] = 1
    with pytest.raises(SchemaError, match=r"result.schema_version is 1: .* reads version 2"):
        check_result(broken)
    broken = copy.deepcopy(live_like)
    broken["points"][0]["admitted"] = True
    with pytest.raises(SchemaError, match=r"points\[0\].admitted is a bool, expected int"):
        check_result(broken)
