"""``lipsync bench --soak`` run short: one real server, every client kind, the document's invariants.

Behaviour only: how requests are classified, what the document holds; no time and no memory figure is
asserted (the machine may be shared). The server runs ``--model identity`` (no network), so the clients do
not depend on the machine keeping up with a real model.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import lipsync_tools.bench
from lipsync_tools.bench import SchemaError, SoakOptions, check_result, load_schema, run_soak, to_markdown
from lipsync_tools.bench.probes import as_this_version, probes
from lipsync_tools.bench.soak import CLIENT_KINDS, ROSTER
from lipsync_tools.bench.soak_clients import MAX_LISTED, Reservoir, Tally, failure_code
from lipsync_tools.cli.main import app
from lipsync_tools.errors import ProtocolError, UsageError
from lipsync_tools.protocol import CLOSING_ERROR_CODES, CODECS, HTTP_STATUS


@pytest.fixture(scope="module")
def result(talking_head_mp4: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real soak of 16 s (5 s of warm-up), every client kind: about 35 s in all, the build included."""
    options = SoakOptions(
        seconds=16,
        warmup_seconds=5,
        input=talking_head_mp4,
        model="identity",
        session_seconds=2.0,
        request_timeout=15,
        work_dir=tmp_path_factory.mktemp("soak"),
    )
    messages: list[str] = []
    document = run_soak(options, progress=messages.append)
    assert any("soak: 8 clients" in m for m in messages)
    return document


@pytest.mark.slow
def test_the_soak_runs_every_client_kind_and_follows_the_schema(result: dict[str, Any]):
    check_result(result)  # dispatches on "kind": "soak"
    check_result(result, load_schema("soak"))
    json.loads(json.dumps(result))  # JSON-ready, no NumPy scalars
    assert result["kind"] == "soak" and [c["kind"] for c in result["clients"]] == list(ROSTER)
    requests = result["requests"]
    assert set(requests["by_kind"]) == set(CLIENT_KINDS)
    for kind, outcomes in requests["by_kind"].items():
        assert sum(outcomes.values()) > 0, f"{kind} made no request"
    assert requests["total"] == sum(requests["by_outcome"].values())
    assert requests["by_outcome"]["unexpected_error"] == result["unexpected_errors"]["total"]
    expected = sum(c["expected"] for c in result["errors_by_code"].values())
    assert expected == requests["by_outcome"]["expected_error"]
    assert result["crashes"] == [] and result["server"]["exit_code"] is None
    assert result["run"] == {"seconds": 16, "warmup_seconds": 5, "ran_seconds": result["run"]["ran_seconds"],
                             "stopped_early": False}
    sessions = result["sessions"]
    assert sessions["completed"] > 0 and sessions["frames_received"] > 0
    assert 0 <= sessions["frames_dropped"] <= sessions["frames_expected"]
    assert result["server"]["sessions_after"]["sessions"] == 0  # every session released, vanished ones too
    assert result["server"]["metrics_after"]["packages_loaded"] == 1  # loads and unloads left only avatar


@pytest.mark.slow
def test_rss_is_sampled_and_its_growth_reported(result: dict[str, Any]):
    rss = result["rss"]
    assert rss["samples"] >= 14
    assert 0 < rss["start_mb"] <= rss["peak_mb"]
    assert rss["after_warmup_mb"] is not None and rss["end_mb"] is not None and rss["idle_end_mb"] is not None
    expected = round((rss["end_mb"] - rss["after_warmup_mb"]) / rss["after_warmup_mb"] * 100, 0)
    assert round(rss["growth_pct"], 0) == pytest.approx(expected, abs=1)
    assert rss["per_minute"] == []  # 16 s: no whole minute
    goal = result["goal"]
    assert goal["rss_growth_pct"] == rss["growth_pct"] and goal["rss_growth_limit_pct"] == 5.0
    assert goal["met"] == (goal["unexpected_errors"] == 0 and goal["timeouts"] == 0 and goal["crashes"] == 0
                           and rss["growth_pct"] < 5.0)


@pytest.mark.slow
def test_malformed_messages_are_expected_errors(result: dict[str, Any]):
    malformed = result["requests"]["by_kind"]["malformed"]
    assert malformed["expected_error"] > 20
    assert malformed["unexpected_error"] == 0 and malformed["timeout"] == 0
    codes = result["errors_by_code"]
    for code in ("bad_magic", "unsupported_version", "oversize", "truncated", "bad_type", "invalid_json",
                 "unexpected_message", "bad_audio"):
        assert codes[code]["expected"] > 0 and codes[code]["unexpected"] == 0, code
    # the server counted them as its own error replies too
    server_codes = result["server"]["metrics_after"]["errors_by_code"]
    assert server_codes["bad_magic"] >= codes["bad_magic"]["expected"]


@pytest.mark.slow
def test_vanishing_clients_and_slow_readers_are_not_unexpected(result: dict[str, Any]):
    by_kind = result["requests"]["by_kind"]
    vanishing = by_kind["vanishing"]
    assert vanishing["ok"] >= 4 and vanishing["unexpected_error"] == 0 and vanishing["timeout"] == 0
    assert by_kind["slow_reader"]["unexpected_error"] == 0 and by_kind["slow_reader"]["timeout"] == 0
    assert result["server"]["metrics_after"]["disconnects"].get("pending=true", 0) > 0
    listed = [u for u in result["unexpected_errors"]["listed"] if u["client"] in ("vanishing", "malformed")]
    assert listed == []


@pytest.mark.slow
def test_well_behaved_frame_clients_get_frames_and_latency(result: dict[str, Any]):
    by_kind = result["requests"]["by_kind"]
    for kind in ("http_frame", "stream_frame"):
        assert by_kind[kind]["ok"] > 10 and by_kind[kind]["unexpected_error"] == 0, kind
        assert by_kind[kind]["expected_error"] > 0  # frames past the end, unknown packages
    codes = result["errors_by_code"]
    assert codes["frame_out_of_range"]["expected"] > 0 and codes["unknown_package"]["expected"] > 0
    for transport in ("http", "stream"):
        latency = result["frame_latency_ms"][transport]
        assert latency["count"] > 10 and 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    packages = by_kind["packages"]
    assert packages["ok"] >= 3 and codes["conflict"]["expected"] > 0 and codes["forbidden"]["expected"] > 0


@pytest.mark.slow
def test_markdown_and_the_terminal_report_show_every_table(result: dict[str, Any]):
    from rich.console import Console

    from lipsync_tools.bench import print_report

    markdown = to_markdown(result)
    for needle in (
        "**Goal: 0 unexpected errors or timeouts, 0 crashes, RSS growth under 5 % after warm-up**",
        "| client | clients | ok | expected error | unexpected error | timeout |",
        "| malformed | 1 |",
        "| session | 2 |",
        "**Errors by code**",
        "| bad_magic |",
        "**Server RSS (MB)**",
        "| transport | requests | p50 | p99 | max |",
        "soak: 8 clients (2 session, 1 http_frame",
    ):
        assert needle in markdown, needle
    console = Console(record=True, width=160)
    print_report(result, console)
    assert "Requests by client and outcome" in console.export_text()


@pytest.mark.slow
def test_a_server_that_dies_is_a_crash_and_the_soak_stops(result: dict[str, Any], tmp_path: Path):
    """The server is killed 3 s into the load: the crash is reported (exit code, time), the run stops early,
    and the document still follows the schema."""
    import signal
    import threading

    import psutil

    def kill_the_server_soon(message: str) -> None:
        if "soak: 8 clients" not in message:
            return
        [server] = [c for c in psutil.Process().children() if "serve" in c.cmdline()]

        def kill() -> None:
            time.sleep(3)
            server.send_signal(signal.SIGKILL)

        threading.Thread(target=kill, daemon=True).start()

    options = SoakOptions(seconds=30, input=Path(result["input"]["package"]), model="identity",
                          request_timeout=10, work_dir=tmp_path)
    document = run_soak(options, progress=kill_the_server_soon)
    check_result(document)
    [crash] = document["crashes"]
    assert crash["exit_code"] == -signal.SIGKILL and 2 <= crash["at_seconds"] < 10
    assert document["run"]["stopped_early"] and document["run"]["ran_seconds"] < 15
    assert document["server"]["exit_code"] == -signal.SIGKILL and document["goal"]["crashes"] == 1
    assert not document["goal"]["met"] and any("exited with code" in n for n in document["notes"])


# --- without a server ---------------------------------------------------------------------------------------


def test_each_probe_expects_what_the_reference_decoder_and_the_spec_say():
    """Probes that fail in the codec fail there with their expected code; the others are valid messages
    the server refuses for what they ask; closing codes close, HTTP statuses are the codes' own."""
    context_codes = {"unexpected_message", "unknown_package", "frame_out_of_range"}
    round_ = probes(random.Random(0), n_frames=120)
    assert len({p.name for p in round_}) == len(round_)
    for probe in round_:
        if probe.transport == "ws":
            codec = CODECS["json" if isinstance(probe.data, str) else "binary"]
            try:
                codec.decode(probe.data)
            except ProtocolError as exc:
                assert exc.code == probe.code, probe.name
            else:
                assert probe.code in context_codes, probe.name
            assert probe.closes == (probe.code in CLOSING_ERROR_CODES), probe.name
        else:
            assert isinstance(probe.data, bytes) and probe.data.startswith((b"POST ", b"GET "))
            if probe.code is not None and probe.status != 415:
                assert probe.status == HTTP_STATUS[probe.code], probe.name
    noise = [p.data for p in probes(random.Random(1), 120) if p.name == "random bytes"]
    assert noise and noise[0][:1] != b"L"


def test_an_old_version_error_reply_is_read_as_this_version():
    from lipsync_tools.protocol import ErrorReply

    refusal = ErrorReply(request_id=0, code="unsupported_version", message="m")
    reply = CODECS["binary"].encode_error(refusal, 1)
    assert reply[4] == 1
    decoded = CODECS["binary"].decode(as_this_version(reply))
    assert isinstance(decoded, ErrorReply) and decoded.code == "unsupported_version"
    assert as_this_version("text") == "text"


def test_failures_map_to_codes():
    import httpx
    from websockets.exceptions import ConnectionClosedError
    from websockets.frames import Close

    assert failure_code(TimeoutError()) is None
    assert failure_code(httpx.ReadTimeout("slow")) is None
    assert failure_code(ProtocolError("internal", "boom")) == "internal"
    assert failure_code(ConnectionResetError()) == "connection_reset"
    assert failure_code(ConnectionRefusedError()) == "connection_refused"
    assert failure_code(asyncio.IncompleteReadError(b"", 10)) == "connection_lost"
    assert failure_code(ConnectionClosedError(None, None)) == "connection_lost"
    assert failure_code(ConnectionClosedError(Close(1008, "too_slow"), None)) == "closed_1008"
    with pytest.raises(TypeError, match="not a request failure: ValueError"):
        failure_code(ValueError("a bug of the benchmark"))


def test_the_tally_counts_expected_and_unexpected_errors_apart():
    tally = Tally(t0=0.0)
    tally.ok("session")
    tally.error("malformed", "random bytes", "bad_magic", "m", expected=True)
    tally.error("http_frame", "frame", "internal", "boom\n  trace", expected=False)
    tally.timeout("packages", "load")
    assert tally.outcomes["session"]["ok"] == 1 and tally.outcomes["malformed"]["expected_error"] == 1
    assert tally.codes == {"bad_magic": {"expected": 1}, "internal": {"unexpected": 1}}
    assert tally.unexpected_total == 1 and tally.outcomes["packages"]["timeout"] == 1
    assert [u["code"] for u in tally.unexpected] == ["internal", "timeout"]
    assert tally.unexpected[0]["detail"] == "boom trace"
    for _ in range(2 * MAX_LISTED):
        tally.error("session", "s", "internal", "x", expected=False)
    assert len(tally.unexpected) == MAX_LISTED and tally.unexpected_total == 2 * MAX_LISTED + 1


def test_the_latency_reservoir_is_bounded_and_counts_everything():
    reservoir = Reservoir(100, seed=0)
    assert reservoir.stats_ms() == {"count": 0, "p50": None, "p99": None, "max": None}
    for i in range(10_000):
        reservoir.add((i % 100) / 1000)  # 0..99 ms
    stats = reservoir.stats_ms()
    assert len(reservoir.values) == 100 and stats["count"] == 10_000
    assert 30 <= stats["p50"] <= 70 and stats["p99"] <= stats["max"] <= 99


def test_options_are_checked():
    for bad in (
        {"seconds": 1},
        {"seconds": 60, "warmup_seconds": 40},
        {"seconds": 60, "model": "wav2lip"},
        {"seconds": 60, "backend": "tensorrt"},
        {"seconds": 60, "session_seconds": 0.1},
        {"seconds": 60, "min_session_fps": 0},
        {"seconds": 60, "max_sessions": 0},
        {"seconds": 60, "request_timeout": 0},
    ):
        with pytest.raises(UsageError):
            SoakOptions(**bad)
    assert SoakOptions(seconds=600).warmup == 60
    assert SoakOptions(seconds=60).warmup == 6
    assert SoakOptions(seconds=8).warmup == 4  # at most half the run
    assert SoakOptions(seconds=60, warmup_seconds=0).warmup == 0


def test_soak_schema_errors_name_the_place(soak_like: dict[str, Any]):
    check_result(soak_like)
    broken = copy.deepcopy(soak_like)
    del broken["rss"]["growth_pct"]
    with pytest.raises(SchemaError, match=r"result.rss lacks growth_pct"):
        check_result(broken)
    broken = copy.deepcopy(soak_like)
    broken["requests"]["by_kind"]["session"]["ok"] = 1.5
    with pytest.raises(SchemaError, match=r"requests.by_kind.session.ok is float, expected int"):
        check_result(broken)
    broken = copy.deepcopy(soak_like)
    broken["schema_version"] = 2
    with pytest.raises(SchemaError, match=r"a --soak document of another version; .* reads version 1"):
        check_result(broken)
    broken = copy.deepcopy(soak_like)
    broken["kind"] = "marathon"
    with pytest.raises(SchemaError, match=r"result.kind is 'marathon'"):
        check_result(broken)


def test_cli_passes_soak_options_and_writes_json_and_markdown(
    soak_like: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    seen: list[SoakOptions] = []

    def fake_run(options: SoakOptions, progress: Any = None, ticker: Any = None) -> dict[str, Any]:
        seen.append(options)
        return soak_like

    monkeypatch.setattr(lipsync_tools.bench, "run_soak", fake_run)
    out, md = tmp_path / "soak.json", tmp_path / "soak.md"
    cli = CliRunner().invoke(
        app,
        ["bench", "--soak", "90", "--model", "identity", "--min-session-fps", "8", "--session-seconds", "2",
         "--json", str(out), "--markdown", str(md)],
    )
    assert cli.exit_code == 0, cli.output  # a missed goal is reported, not an exit code (as --live)
    check_result(json.loads(out.read_text()))
    assert "Requests by client and outcome" in cli.output and "| internal | 0 | 1 |" in md.read_text()
    [options] = seen
    assert (options.seconds, options.model) == (90, "identity")
    assert (options.min_session_fps, options.session_seconds) == (8, 2)
    cli = CliRunner().invoke(app, ["bench", "--soak", "90", "--json", "-"])
    assert cli.exit_code == 0 and json.loads(cli.stdout)["kind"] == "soak"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--soak", "60", "--live"], "--live and --soak, not both"),
        (["--soak", "60", "--quick"], "--quick does not apply to --soak"),
        (["--soak", "60", "--plot", "p.png"], "--plot does not apply to --soak"),
        (["--soak", "60", "--sessions", "1,2"], "--sessions does not apply to --soak"),
        (["--soak", "2"], "--soak 2: expected 5..604800 seconds"),
        (["--soak", "60", "--model", "wav2lip"], "wav2lip"),
    ],
)
def test_cli_refuses_bad_soak_options_before_any_work(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
):
    def never(*_: Any, **__: Any) -> dict[str, Any]:
        raise AssertionError("the run started")

    monkeypatch.setattr(lipsync_tools.bench, "run_soak", never)
    cli = CliRunner().invoke(app, ["bench", *args])
    assert cli.exit_code == 2, cli.output
    assert message in " ".join(cli.output.split()), cli.output


def test_the_soak_server_loads_packages_at_run_time(tmp_path: Path):
    from lipsync_tools.bench.live import LiveLaunch

    common = {"name": "soak", "kind": "package", "package_id": "avatar", "path": Path("v.sanders"),
              "log_dir": tmp_path, "model": "identity"}
    soak = LiveLaunch(**common, runtime_loading=True,
                      serve_options=("--package-dir", "/pkgs", "--catalog", "/c.json")).command()
    assert "--no-runtime-loading" not in soak and soak[soak.index("--package-dir") + 1] == "/pkgs"
    assert soak[soak.index("--catalog") + 1] == "/c.json" and soak[-1] == "avatar=v.sanders"
    assert "--no-runtime-loading" in LiveLaunch(**common).command()  # --live and --compare: off
