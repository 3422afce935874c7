"""Issue 12's goals and precisions in the bench documents: evaluated on synthetic results (no run), the server
command lines and options that choose a precision and a device, what a server's ready event says ran."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import lipsync_tools.bench
from lipsync_tools.bench import CompareOptions, LiveOptions, SoakOptions, check_result, tables, to_markdown
from lipsync_tools.bench.live import LiveLaunch, held
from lipsync_tools.bench.live import goals as live_goals
from lipsync_tools.bench.modes import ServerLaunch, runtime_of
from lipsync_tools.bench.runner import goals, headline, runtime_notes
from lipsync_tools.cli.main import app
from lipsync_tools.errors import UsageError
from tests.bench.conftest import precision_section, runtime


def _stats(median: float) -> dict[str, float]:
    return {"median_ms": median, "p90_ms": median * 1.1}


@pytest.fixture
def measured(result_like: dict[str, Any]) -> dict[str, Any]:
    """A 720p result with preloaded and preloaded-crop, 1 and 4 clients, the server's capacity and int8."""
    doc = copy.deepcopy(result_like)
    doc["input"].update(width=1280, height=720)
    base = doc["modes"]["preloaded"]
    doc["modes"]["preloaded"] = {
        **base, "stages": {"model inference": _stats(40.0)}, "end_to_end": _stats(44.0),
        "runtime": runtime("int8", fps={"1": 20.0, "4": 24.0, "8": 25.0}),
    }
    doc["modes"]["preloaded-crop"] = {
        **base, "stages": {"model inference": _stats(40.0)}, "end_to_end": _stats(40.6),
        "runtime": runtime("int8"),
    }
    point = doc["scaling"]["preloaded"][0]
    doc["scaling"]["preloaded"] = [point, {**point, "clients": 4, "total_fps": 23.0}]
    doc["precision"] = precision_section(fp32_ms=40.0, int8_ms=24.0, psnr=34.5)
    doc["headline"] = headline(doc)
    return doc


def test_every_goal_is_measured_against_its_limit(measured: dict[str, Any]):
    g = measured["headline"]["goals"]
    check_result(measured)
    assert g["crop_only_over_model"]["measured"] == pytest.approx(40.6 / 40.0)
    assert g["crop_only_over_model"]["met"] is True and g["crop_only_over_model"]["limit"] == 1.02
    hd = g["hd_jpeg_over_model"]
    assert hd["measured"] == pytest.approx(1.1) and hd["met"] is False
    # the ceiling is the server's best measured rate up to its batch size (8): 25 frames/s at batch 8
    four = g["four_clients_over_ceiling"]
    assert four["measured"] == pytest.approx(23.0 / 25.0) and four["met"] is True
    assert "best of its batch sizes up to 8 (frames/s by batch 1: 20.0, 4: 24.0, 8: 25.0)" in four["source"]
    assert g["int8_over_fp32"]["measured"] == pytest.approx(0.6) and g["int8_over_fp32"]["met"] is True
    assert g["int8_psnr_db"]["measured"] == 34.5 and g["int8_psnr_db"]["met"] is True
    assert all(goal["reason"] is None for goal in g.values())


def test_a_goal_the_run_did_not_measure_says_which_option_measures_it(result_like: dict[str, Any]):
    doc = copy.deepcopy(result_like)  # 176x144, preloaded only, 1 client, no int8 built
    doc["precision"] = precision_section(int8_ms=None)
    g = goals(doc)
    for key, needle in (
        ("crop_only_over_model", "--modes ...,preloaded-crop"),
        ("hd_jpeg_over_model", "--hd"),
        ("four_clients_over_ceiling", "--clients ...,4"),
        ("int8_over_fp32", "ValueError: no data"),
        ("int8_psnr_db", "int8 was not checked"),
    ):
        assert g[key]["met"] is None and g[key]["measured"] is None, key
        assert needle in g[key]["reason"], (key, g[key]["reason"])


def test_the_ceiling_is_the_best_rate_of_the_batch_sizes_the_server_may_use(measured: dict[str, Any]):
    doc = copy.deepcopy(measured)
    runtime = doc["modes"]["preloaded"]["runtime"]
    runtime["frames_per_second"] = {"1": 20.0, "4": 26.0, "8": 24.0, "16": 40.0}  # 16: above its max batch
    assert goals(doc)["four_clients_over_ceiling"]["measured"] == pytest.approx(23.0 / 26.0, abs=1e-4)


def test_the_ceiling_falls_back_to_the_precision_section_of_the_precision_that_ran(measured: dict[str, Any]):
    doc = copy.deepcopy(measured)
    doc["modes"]["preloaded"]["runtime"]["frames_per_second"] = {}  # a server that does not measure it
    four = goals(doc)["four_clients_over_ceiling"]
    assert four["measured"] == pytest.approx(23.0 / (1000 / 24.0))  # int8 ran: its batched 24 ms per frame
    assert "precision section's int8 at batch 4" in four["source"]


def test_int8_speed_is_judged_at_its_worst_batch_and_psnr_against_30_db(measured: dict[str, Any]):
    doc = copy.deepcopy(measured)
    rows = doc["precision"]["rows"]
    rows[1]["over_fp32"] = 0.7  # int8 at batch 1: slower relative to fp32 than at batch 4
    doc["precision"]["quality"]["psnr_db"] = 28.0
    g = goals(doc)
    assert g["int8_over_fp32"]["measured"] == 0.7 and g["int8_over_fp32"]["met"] is False
    assert g["int8_psnr_db"]["met"] is False
    doc["precision"]["quality"].update(psnr_db=None, identical=True)  # equal outputs: infinite PSNR
    psnr = goals(doc)["int8_psnr_db"]
    assert psnr["met"] is True and psnr["measured"] is None
    json.dumps(goals(doc), allow_nan=False)  # no infinity in the document


def test_tables_and_markdown_show_the_goals_and_the_precision_section(measured: dict[str, Any]):
    titles = [t.title for t in tables(measured)]
    assert any(t.startswith("Issue 12's goals") for t in titles)
    assert any(t.startswith("Precision: the package's wav2lip model") for t in titles)
    markdown = to_markdown(measured)
    for needle in ("int8 model time <= 0.65 x fp32", "| 0.6 | <= 0.65 | yes |", "PSNR vs fp32 dB",
                   "int8 first build 12.0 s", "cached load 3.0 s",
                   "quality gate (30 dB on 16 held-out frames): passed", "model precision that ran, device",
                   "| int8 on cpu |"):
        assert needle in markdown, needle


def test_server_command_lines_carry_precision_and_device_only_when_asked(tmp_path: Path):
    common = {"name": "m", "package_id": "avatar", "kind": "package", "path": Path("v.sanders"),
              "log_dir": tmp_path}
    default = ServerLaunch(**common).command()
    assert "--precision" not in default and "--device" not in default  # works with any lipsync serve
    cmd = ServerLaunch(**common, precision="int8", device="cuda:1").command()
    assert cmd[cmd.index("--precision") + 1] == "int8" and cmd[cmd.index("--device") + 1] == "cuda:1"
    assert cmd[-1] == "avatar=v.sanders"
    serve_options = ("--max-sessions", "2")
    live = LiveLaunch(**common, precision="fp16", device="cuda", serve_options=serve_options).command()
    assert live[live.index("--precision") + 1] == "fp16" and live[live.index("--device") + 1] == "cuda"
    assert live[-1] == "avatar=v.sanders" and live[live.index("--max-sessions") + 1] == "2"


def test_start_servers_runs_the_original_servers_fp32_when_int8_is_asked(tmp_path: Path, monkeypatch):
    from lipsync_tools.bench import runner

    started: list[ServerLaunch] = []

    def fake_start(launch: ServerLaunch, timeout: float = 0.0) -> Any:
        started.append(launch)
        return object()

    monkeypatch.setattr(runner.ServerProcess, "start", staticmethod(fake_start))
    bench_input = runner.BenchInput(
        video=Path("v.mp4"), package=Path("v.sanders"), width=176, height=144, n_frames=1, fps=25.0,
        crop_size=96, pcm=None, crops=None,  # type: ignore[arg-type]
    )
    options = CompareOptions(precision="int8", modes=("original", "preloaded"))
    runner.start_servers(options, bench_input, ["original", "preloaded"], tmp_path, lambda _: None)
    assert [(s.kind, s.precision) for s in started] == [("original", "fp32"), ("package", "int8")]
    notes = runtime_notes(options, {"original": runtime("fp32"), "preloaded": runtime("int8")})
    assert notes == [
        "original: int8 calibrates on a package's own frames and an original server has none, so these "
        "servers ran fp32"
    ]


def test_a_server_that_ran_fp32_for_int8_is_reported_as_fp32_with_its_psnr():
    ready = {
        "model": {"precision": "fp32", "precision_requested": "int8", "device": "cpu",
                  "quality": {"psnr_db": 27.3, "identical": False, "frames": 16, "threshold_db": 30.0,
                              "passed": False},
                  "models": [{"capacity": {"batch_ms": {"1": 40.0}, "frames_per_second": {"1": 25.0}}}]},
        "batching": {"max_batch": 2},
    }
    ran = runtime_of(ready)
    assert (ran["precision"], ran["precision_requested"], ran["max_batch"]) == ("fp32", "int8", 2)
    assert ran["frames_per_second"] == {"1": 25.0} and ran["quality"]["passed"] is False
    [note] = runtime_notes(CompareOptions(precision="int8"), {"preloaded": ran})
    assert "asked for int8, its server ran fp32: the quality gate refused int8 (PSNR 27.3 dB" in note
    # a server that says nothing about precision ran the default
    assert runtime_of({"model": {}}) == {
        "precision": "fp32", "precision_requested": "fp32", "device": "cpu", "quality": None,
        "max_batch": None, "frames_per_second": {},
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "int4"}, "unknown precision 'int4'"),
        ({"precision": "fp16"}, "fp16 runs on GPUs"),
        ({"device": "gpu"}, "unknown device 'gpu'"),
        ({"precision": "int8", "backend": "torch"}, "int8 runs on ONNX Runtime"),
    ],
)
def test_every_benchmark_checks_precision_and_device(options: dict[str, Any], message: str):
    for make in (CompareOptions, LiveOptions, lambda **kw: SoakOptions(seconds=60, **kw)):
        with pytest.raises(UsageError, match=message):
            make(**options)


def test_the_cli_passes_precision_and_device_to_each_benchmark(monkeypatch, live_like: dict[str, Any],
                                                                 measured: dict[str, Any]):
    seen: list[Any] = []

    def fake(document: dict[str, Any]) -> Any:
        def run(options: Any, progress: Any = None, **_: Any) -> dict[str, Any]:
            seen.append(options)
            return document
        return run

    monkeypatch.setattr(lipsync_tools.bench, "run_live", fake(live_like))
    monkeypatch.setattr(lipsync_tools.bench, "run_compare", fake(measured))
    cli = CliRunner().invoke(app, ["bench", "--live", "--precision", "int8", "--sessions", "2",
                                   "--json", "-"])
    assert cli.exit_code == 0, cli.output
    cli = CliRunner().invoke(app, ["bench", "--compare", "--precision", "int8", "--json", "-"])
    assert cli.exit_code == 0, cli.output
    assert [(o.precision, o.device) for o in seen] == [("int8", "cpu"), ("int8", "cpu")]
    assert seen[0].sessions == (2,)
    cli = CliRunner().invoke(app, ["bench", "--compare", "--precision", "fp16"])
    assert cli.exit_code == 2 and "fp16 runs on GPUs" in " ".join(cli.output.split())


def _live(family: str = "wav2lip", ran: str = "int8", asked: str = "int8", sessions: int = 2,
          all_held: bool = True, psnr: float | None = 34.0) -> dict[str, Any]:
    return {
        "input": {"family": family},
        "runtime": runtime(ran, asked, psnr=psnr),
        "machine": {"cores_logical": 2},
        "settings": {"model": "random", "target_fps": 25.0},
        "points": [
            {"sessions": sessions, "held": sessions if all_held else sessions - 1, "all_held": all_held}
        ],
    }


def test_the_live_goals_are_evaluated_only_by_the_runs_that_measure_them():
    g = live_goals(_live())
    wav2lip, synctalk = g["wav2lip_int8_two_sessions"], g["synctalk2d_328_one_session"]
    assert wav2lip["met"] is True and wav2lip["measured"] == 2
    assert wav2lip["source"] == (
        "2 of 2 session(s) held 25 fps on time (wav2lip, int8 on cpu, 2 logical cores)"
    )
    assert synctalk["met"] is None and "needs a synctalk2d-328 one" in synctalk["reason"]
    assert live_goals(_live(all_held=False))["wav2lip_int8_two_sessions"]["met"] is False
    refused = live_goals(_live(ran="fp32", psnr=27.0))["wav2lip_int8_two_sessions"]
    assert refused["met"] is None and "the quality gate refused int8 (PSNR 27.0 dB" in refused["reason"]
    fp32 = live_goals(_live(ran="fp32", asked="fp32", psnr=None))["wav2lip_int8_two_sessions"]
    assert "needs --precision int8" in fp32["reason"]
    assert "--sessions ...,2" in live_goals(_live(sessions=4))["wav2lip_int8_two_sessions"]["reason"]
    one = live_goals(_live(family="synctalk2d-328", ran="fp32", asked="fp32", sessions=1, psnr=None))
    assert one["synctalk2d_328_one_session"]["met"] is True  # any precision
    assert one["wav2lip_int8_two_sessions"]["met"] is None


def test_a_session_holds_25_fps_only_on_time_without_error():
    assert held(None, 25.0, 0, 0)
    assert held(None, 29.5, 0, 0)  # a 29.97 fps package that dropped a frame still delivers 25 per second
    assert not held(None, 24.8, 0, 0)
    assert not held(None, 25.0, 1, 0)  # a frame later than the server's bound
    assert not held("too_slow: ...", 25.0, 0, 0)
    assert not held(None, 25.0, 0, 2)


def test_live_tables_show_held_sessions_and_the_goals(live_like: dict[str, Any]):
    markdown = to_markdown(live_like)
    assert "held 25 fps on time" in markdown and "| 1 / 1 |" in markdown
    assert "Issue 12's live goals" in markdown and "fp32 on cpu" in markdown
