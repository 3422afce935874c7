"""``lipsync bench --compare`` on a tiny configuration: it runs, produces every figure, the schema holds.

No absolute time is asserted anywhere: the machine may be shared, and the numbers are the benchmark's job.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import lipsync_tools.bench
from lipsync_tools.bench import (
    COMPONENTS,
    CompareOptions,
    SchemaError,
    check_result,
    parse_modes,
    run_compare,
    tables,
    to_markdown,
)
from lipsync_tools.bench.modes import ServerLaunch
from lipsync_tools.bench.plot import write_plot
from lipsync_tools.cli.main import app
from lipsync_tools.errors import UsageError

MODES = ("original", "preloaded", "preloaded-lean")  # binary = original with the other codec


@pytest.fixture(scope="module")
def result(talking_head_mp4: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real run: three server processes (one per mode), 1 and 2 clients, a couple of frames each."""
    options = CompareOptions(
        input=talking_head_mp4,
        frames=2,
        warmup=1,
        clients=(1, 2),
        scaling_frames=2,
        min_frames_per_client=1,
        modes=MODES,
        model_batch=2,
        model_repeats=1,
        model_warmup=1,
        phase_seconds=60,
        work_dir=tmp_path_factory.mktemp("bench"),
    )
    messages: list[str] = []
    document = run_compare(options, progress=messages.append)
    assert any("latency" in m for m in messages)
    return document


@pytest.mark.slow
def test_the_run_follows_the_schema_and_has_every_figure(result: dict[str, Any]):
    check_result(result)
    json.loads(json.dumps(result))  # JSON-ready, no NumPy scalars
    assert list(result["modes"]) == list(MODES)
    for name, mode in result["modes"].items():
        assert mode["frames"] == 2
        assert set(mode["stages"]) == {label for label, _ in COMPONENTS} | {"transport"}
        assert mode["stages"]["model inference"]["median_ms"] > 0
        assert mode["end_to_end"]["median_ms"] >= mode["server_total"]["median_ms"] > 0
        assert mode["fps"] > 0 and mode["memory"]["peak_rss_mb"] > 0
        assert mode["startup"]["model_load_s"] > 0
        assert "feature_mapping_s" in mode["startup"] and "audio_features_s" not in mode["startup"]
        original_path = name in ("original", "binary")
        assert (mode["stages"]["face detection"]["median_ms"] > 0) == original_path
        assert (mode["startup"]["frame_preload_s"] > 0) == (not original_path)
    assert [p["clients"] for p in result["scaling"]["preloaded"]] == [1, 2]
    assert all(p["total_fps"] > 0 for points in result["scaling"].values() for p in points)
    backends = {(b["backend"], b["batch"]) for b in result["backends"]}
    assert backends >= {
        ("torch eager", 1),
        ("torch channels_last", 2),
        ("onnxruntime", 1),
        ("onnxruntime", 2),
    }
    # every registered family's network, side by side, on both runtimes
    from lipsync_tools.models.families import MODEL_FAMILIES

    timed = {(f["family"], f["backend"], f["batch"]) for f in result["families"]}
    assert timed >= {(name, runtime, 1) for name in MODEL_FAMILIES for runtime in ("onnx", "torch")}
    assert all(f["ms_per_frame_median"] > 0 for f in result["families"])
    assert result["input"]["family"] == "wav2lip"
    cold = result["cold_start"]
    assert cold["first_frame_ms"] > cold["warm_frame_ms"] > 0 and cold["decoded_frames_mb"] > 0
    headline = result["headline"]
    assert headline["non_model_ratio_original_over_preloaded"] > 0
    assert headline["preloaded_end_to_end_over_model"] > 1
    # the precision section: fp32 and int8 side by side on the package, at batch 1 and the model batch; int8
    # either measured (with its ratio and the engine's PSNR) or a row that says why it could not be built
    precision = result["precision"]
    assert precision["family"] == "wav2lip" and precision["fp32_load_s"] > 0
    rows = {(r["precision"], r["batch"]): r for r in precision["rows"]}
    assert set(rows) == {("fp32", 1), ("fp32", 2), ("int8", 1), ("int8", 2)}
    assert all(rows[("fp32", b)]["ms_per_frame_median"] > 0 for b in (1, 2))
    for b in (1, 2):
        int8 = rows[("int8", b)]
        if int8["ms_per_frame_median"] is None:
            assert int8["note"] and precision["quality"] is None
        else:
            assert int8["over_fp32"] > 0 and precision["int8_build_s"] > 0
            assert precision["quality"]["frames"] > 0
    # every goal present: measured, or null with the reason (no preloaded-crop mode, 176x144, no 4 clients)
    goals = headline["goals"]
    assert goals["crop_only_over_model"]["met"] is None and goals["hd_jpeg_over_model"]["met"] is None
    assert goals["four_clients_over_ceiling"]["met"] is None
    for mode in result["modes"].values():
        assert mode["runtime"]["precision"] == "fp32" and mode["runtime"]["device"] == "cpu"
    assert result["modes"]["preloaded"]["runtime"]["frames_per_second"]  # the server measured its capacity
    assert result["machine"]["cores_logical"] >= 1 and result["machine"]["libraries"]["numpy"]


@pytest.mark.slow
def test_tables_markdown_and_plot_show_every_figure(result: dict[str, Any], tmp_path: Path):
    titles = [t.title for t in tables(result)]
    assert len(titles) == 9
    markdown = to_markdown(result)
    for needle in (
        "feature mapping",
        "face detection",
        "model inference",
        "transport",
        "non-model",
        "FPS",
        "2 clients",
        "peak RSS",
        "onnxruntime",
        "torch eager",
        "original / preloaded",
        "Precision: the package's wav2lip model",
        "Issue 12's goals",
        "needs the preloaded-crop mode",
    ):
        assert needle in markdown
    png = write_plot(result, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 300_000


@pytest.mark.slow
def test_cli_writes_json_markdown_and_plot(
    result: dict[str, Any], tmp_path: Path, monkeypatch, talking_head_mp4
):
    seen: list[CompareOptions] = []

    def fake_run(options: CompareOptions, progress: Any = None) -> dict[str, Any]:
        seen.append(options)
        return result

    monkeypatch.setattr(lipsync_tools.bench, "run_compare", fake_run)
    out = tmp_path / "r.json"
    cli = CliRunner().invoke(
        app,
        [
            "bench",
            "--compare",
            str(talking_head_mp4),
            "--quick",
            "--frames",
            "3",
            "--clients",
            "1,2",
            "--modes",
            "preloaded,original",
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "r.md"),
            "--plot",
            str(tmp_path / "r.png"),
        ],
    )
    assert cli.exit_code == 0, cli.output
    check_result(json.loads(out.read_text()))
    assert "Per component" in cli.output and (tmp_path / "r.md").is_file() and (tmp_path / "r.png").is_file()
    [options] = seen
    assert options.frames == 3 and options.clients == (1, 2) and options.modes == ("preloaded", "original")
    assert options.input == talking_head_mp4 and options.model_repeats == CompareOptions.quick().model_repeats


def test_schema_errors_name_the_place(result_like: dict[str, Any]):
    check_result(result_like)
    broken = copy.deepcopy(result_like)
    del broken["modes"]["preloaded"]["end_to_end"]["p90_ms"]
    with pytest.raises(SchemaError, match=r"result.modes.preloaded.end_to_end lacks p90_ms"):
        check_result(broken)
    broken = copy.deepcopy(result_like)
    broken["scaling"]["preloaded"][0]["clients"] = True
    with pytest.raises(SchemaError, match=r"scaling.preloaded\[0\].clients is a bool, expected int"):
        check_result(broken)
    broken = copy.deepcopy(result_like)
    broken["input"]["width"] = "176"
    with pytest.raises(SchemaError, match=r"result\.input\.width is str, expected int"):
        check_result(broken)


def test_older_documents_are_refused_by_their_version(result_like: dict[str, Any]):
    """Schema 3 renamed startup.audio_features_s to feature_mapping_s, schema 4 added the precision section,
    each mode's runtime and the headline's goals: a reader of 4 refuses a 2 or a 3 by its version, not by a
    missing key."""
    from lipsync_tools.bench import COMPARE_SCHEMA_VERSION

    assert COMPARE_SCHEMA_VERSION == 4
    old = copy.deepcopy(result_like)
    old["schema_version"] = 2
    startup = old["modes"]["preloaded"]["startup"]
    startup["audio_features_s"] = startup.pop("feature_mapping_s")
    with pytest.raises(SchemaError, match=r"a --compare document of another version; .* reads version 4"):
        check_result(old)
    old = copy.deepcopy(result_like)
    old["schema_version"] = 3
    del old["precision"], old["headline"]["goals"], old["modes"]["preloaded"]["runtime"]
    with pytest.raises(SchemaError, match=r"result.schema_version is 3: .* reads version 4"):
        check_result(old)


def test_options_and_modes_are_checked():
    assert parse_modes("original, preloaded") == ("original", "preloaded")
    for bad in ("", "original,original", "gpu"):
        with pytest.raises(UsageError):
            parse_modes(bad)
    with pytest.raises(UsageError):
        CompareOptions(clients=(0,))
    with pytest.raises(UsageError):
        CompareOptions(frames=0)
    assert CompareOptions.quick().frames < CompareOptions().frames


def test_server_commands_use_the_same_model(tmp_path: Path):
    common = {"name": "m", "package_id": "avatar", "seed": 3, "backend": "onnx", "log_dir": tmp_path}
    original = ServerLaunch(kind="original", path=Path("v.mp4"), **common).command()
    package = ServerLaunch(kind="package", path=Path("v.sanders"), **common).command()
    assert original[original.index("--original") + 1] == "avatar=v.mp4" and package[-1] == "avatar=v.sanders"
    for cmd in (original, package):
        assert cmd[cmd.index("--model") + 1] == "random" and cmd[cmd.index("--seed") + 1] == "3"
        assert cmd[cmd.index("--port") + 1] == "0" and "--host" not in cmd  # loopback default


def test_cli_needs_compare_and_valid_clients():
    result = CliRunner().invoke(app, ["bench"])
    assert result.exit_code == 2 and "--compare" in result.output
    result = CliRunner().invoke(app, ["bench", "--compare", "--clients", "one"])
    assert result.exit_code == 2 and "1,2,4,8" in result.output


def test_importing_the_benchmark_does_no_work():
    code = (
        "import sys, time; t = time.perf_counter(); import lipsync_tools.bench; "
        "print(time.perf_counter() - t, *(m in sys.modules for m in "
        "('torch', 'matplotlib', 'mediapipe', 'onnxruntime', 'lipsync_tools.server', 'psutil')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    _, *loaded = out.stdout.split()
    assert loaded == ["False"] * 6, out.stdout


@pytest.mark.slow
def test_a_synctalk2d_328_run_serves_that_family_in_every_mode(talking_head_mp4: Path, tmp_path: Path):
    """``--family synctalk2d-328``: the package is built for it and the original path renders it per frame."""
    options = CompareOptions(
        input=talking_head_mp4, family="synctalk2d-328", frames=2, warmup=1, clients=(1,), scaling_frames=2,
        min_frames_per_client=1, modes=("original", "preloaded"), model_batch=1, model_repeats=1,
        model_warmup=1, phase_seconds=60, work_dir=tmp_path,
    )
    document = run_compare(options)
    check_result(document)
    assert document["input"]["family"] == "synctalk2d-328"
    assert document["model"]["family"] == "synctalk2d-328"
    for mode in document["modes"].values():
        assert mode["frames"] == 2 and mode["stages"]["model inference"]["median_ms"] > 0
