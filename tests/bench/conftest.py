"""Documents of the benchmarks' schemas, made without a run (for the checker, the tables and the CLI)."""

from __future__ import annotations

from typing import Any

import pytest

from lipsync_tools.bench.live import LIVE_GOALS
from lipsync_tools.bench.report import goal
from lipsync_tools.bench.runner import GOAL_LIMITS

MACHINE = {
    "cpu": "x",
    "cores_logical": 2,
    "cores_physical": None,
    "memory_gb": 1.0,
    "gpu": None,
    "os": "linux",
    "python": "3.11",
    "libraries": {},
    "load_average": [0.0, 0.0, 0.0],
}


def runtime(precision: str = "fp32", requested: str | None = None, psnr: float | None = None,
            fps: dict[str, float] | None = None) -> dict[str, Any]:
    """A mode's or a live document's ``runtime`` (the schema files' ``$defs/runtime``)."""
    quality = None if psnr is None else {
        "psnr_db": psnr, "identical": False, "frames": 16, "threshold_db": 30.0, "passed": psnr >= 30.0
    }
    return {
        "precision": precision, "precision_requested": requested or precision, "device": "cpu",
        "quality": quality, "max_batch": 8,
        "frames_per_second": fps if fps is not None else {"1": 20.0, "8": 25.0},
    }


def precision_section(fp32_ms: float = 40.0, int8_ms: float | None = 24.0, psnr: float | None = 34.0,
                      batch: int = 4) -> dict[str, Any]:
    """A ``precision`` section: fp32 and int8 at batch 1 and ``batch`` (int8 ``None``: it failed to build)."""
    rows = []
    for size in (1, batch):
        rows.append({"precision": "fp32", "batch": size, "ms_per_frame_median": fp32_ms,
                     "ms_per_frame_p90": fp32_ms * 1.1, "over_fp32": 1.0, "psnr_db_vs_fp32": None,
                     "note": ""})
        rows.append({
            "precision": "int8", "batch": size, "ms_per_frame_median": int8_ms,
            "ms_per_frame_p90": None if int8_ms is None else int8_ms * 1.1,
            "over_fp32": None if int8_ms is None else round(int8_ms / fp32_ms, 3),
            "psnr_db_vs_fp32": psnr, "note": "" if int8_ms is not None else "ValueError: no data",
        })
    quality = None if int8_ms is None else {
        "psnr_db": psnr, "identical": psnr is None, "frames": 16, "threshold_db": 30.0,
        "passed": psnr is None or psnr >= 30.0,
    }
    return {
        "device": "cpu", "backend": "onnx", "family": "wav2lip", "batch": batch, "fp32_load_s": 5.0,
        "int8_build_s": None if int8_ms is None else 12.0,
        "int8_cached_load_s": None if int8_ms is None else 3.0,
        "quality": quality, "rows": rows, "notes": [],
    }


@pytest.fixture
def soak_like() -> dict[str, Any]:
    """A minimal ``--soak`` document: 8 clients, a few requests of each outcome, one unexpected error."""
    kinds = ("session", "http_frame", "stream_frame", "packages", "slow_reader", "vanishing", "malformed")
    by_kind = {k: {"ok": 3, "expected_error": 1, "unexpected_error": 0, "timeout": 0} for k in kinds}
    by_kind["http_frame"]["unexpected_error"] = 1
    latency = {"count": 10, "p50": 20.0, "p99": 40.0, "max": 41.0}
    return {
        "schema_version": 1,
        "kind": "soak",
        "machine": MACHINE,
        "load_average_after": [0.0],
        "input": {
            "video": None,
            "package": "p",
            "width": 176,
            "height": 144,
            "n_frames": 120,
            "fps": 29.97,
            "sample": True,
            "family": "wav2lip",
            "speech_seconds": 4.2,
        },
        "settings": {"seconds": 60.0},
        "model": {"name": "identity", "source": "built-in", "is_random": False, "backend": "onnx"},
        "server": {
            "options": {"min_session_fps": 5.0, "max_batch": 8},
            "ready_rss_mb": 580.0,
            "exit_code": None,
            "sessions_after": {"sessions": 0},
            "metrics_after": {"errors_by_code": {"bad_magic": 1}},
            "log": {
                "error_lines": 0, "tracebacks": 0, "warning_lines": 0, "first_errors": [], "path": "x.err"
            },
        },
        "clients": [{"slot": i, "kind": k} for i, k in enumerate(("session", *kinds))],
        "run": {"seconds": 60.0, "warmup_seconds": 6.0, "ran_seconds": 60.0, "stopped_early": False},
        "requests": {
            "total": 29,
            "by_outcome": {"ok": 21, "expected_error": 7, "unexpected_error": 1, "timeout": 0},
            "by_kind": by_kind,
        },
        "errors_by_code": {
            "bad_magic": {"expected": 7, "unexpected": 0},
            "internal": {"expected": 0, "unexpected": 1},
        },
        "unexpected_errors": {
            "total": 1,
            "listed": [
                {"at_seconds": 12.5, "client": "http_frame", "request": "POST /v1/frame (binary) frame",
                 "code": "internal", "detail": "RuntimeError: boom"}
            ],
        },
        "crashes": [],
        "sessions": {
            "started": 4, "completed": 3, "frames_received": 300, "frames_expected": 302, "frames_dropped": 2
        },
        "rss": {
            "start_mb": 580.0,
            "after_warmup_mb": 600.0,
            "per_minute": [{"minute": 1, "at_seconds": 60.0, "rss_mb": 606.0}],
            "end_mb": 606.0,
            "idle_end_mb": 604.0,
            "peak_mb": 612.0,
            "growth_pct": 1.0,
            "samples": 60,
        },
        "frame_latency_ms": {"http": latency, "stream": dict(latency)},
        "goal": {
            "line": "0 unexpected errors or timeouts, 0 crashes, RSS growth under 5 % after warm-up",
            "unexpected_errors": 1,
            "timeouts": 0,
            "crashes": 0,
            "rss_growth_pct": 1.0,
            "rss_growth_limit_pct": 5.0,
            "met": False,
        },
        "notes": [],
        "duration_seconds": 75.0,
    }


@pytest.fixture
def result_like() -> dict[str, Any]:
    """A minimal document in the schema's shape (no run needed)."""

    def stats() -> dict[str, float]:
        return {"median_ms": 1.0, "p90_ms": 2.0}

    mode = {
        "description": "",
        "server": "package",
        "protocol": "binary",
        "image": "jpeg",
        "frames": 1,
        "stages": {"model inference": stats()},
        "server_total": stats(),
        "end_to_end": stats(),
        "fps": 1.0,
        "non_model": stats(),
        "startup": dict.fromkeys(
            (
                "process_to_ready_s",
                "model_load_s",
                "frame_preload_s",
                "feature_mapping_s",
                "package_open_s",
                "warmup_s",
                "server_total_s",
            ),
            0.1,
        ),
        "memory": {"ready_rss_mb": 1.0, "peak_rss_mb": 2.0},
        "runtime": runtime(),
    }
    return {
        "schema_version": 4,
        "machine": MACHINE,
        "load_average_after": [0.0],
        "settings": {},
        "model": {},
        "components": ["model inference"],
        "input": {
            "video": None,
            "package": "p",
            "width": 176,
            "height": 144,
            "n_frames": 1,
            "fps": 25.0,
            "sample": False,
            "family": "wav2lip",
        },
        "modes": {"preloaded": mode},
        "scaling": {
            "preloaded": [
                {
                    "clients": 1,
                    "frames": 1,
                    "total_fps": 1.0,
                    "per_client_fps": 1.0,
                    "latency_median_ms": 1.0,
                    "latency_p90_ms": None,
                }
            ]
        },
        "backends": [
            {
                "backend": "onnxruntime",
                "batch": 1,
                "ms_per_frame_median": 1.0,
                "ms_per_frame_p90": 1.0,
                "prepare_ms": 0.1,
                "note": "",
            }
        ],
        "cold_start": {
            "first_frame_ms": 900.0,
            "warm_frame_ms": 50.0,
            "rss_before_mb": 500.0,
            "rss_after_mb": 520.0,
            "first_load_rss_mb": 20.0,
            "package_rss_mb": 20.0,
            "decoded_frames_mb": 9.0,
            "rss_over_decoded": 2.2,
        },
        "families": [
            {
                "family": "synctalk2d-328",
                "audio_mode": "ave",
                "backend": "onnx",
                "batch": 1,
                "ms_per_frame_median": 50.0,
                "ms_per_frame_p90": 55.0,
                "note": "",
            }
        ],
        "precision": precision_section(),
        "notes": [],
        "headline": {
            "non_model_ratio_original_over_preloaded": None,
            "preloaded_end_to_end_over_model": 1.0,
            "preloaded_overhead_pct": 0.0,
            "speedup_vs_original": {},
            "goal_non_model_ratio": 20.0,
            "goal_overhead_pct": 2.0,
            "goals": {
                key: goal(key, reason="not measured", limits=GOAL_LIMITS)
                for key in GOAL_LIMITS
            },
        },
        "duration_seconds": 1.0,
    }


@pytest.fixture
def live_like() -> dict[str, Any]:
    """A minimal ``--live`` document (no run needed): one point of one session, no drift run."""
    lag = {"median": 200.0, "p90": 210.0, "p99": 220.0, "max": 230.0}
    session = {
        "session": 0,
        "offset_seconds": 0.0,
        "audio_seconds": 2.0,
        "fps": 25.0,
        "frames_expected": 50,
        "frames_received": 50,
        "frames_sent": 50,
        "frames_dropped": 0,
        "silent_frames": 3,
        "bytes_per_frame": 17630.1,
        "encode_ms": 0.41,
        "timeline_errors": 0,
        "delivered_fps": 25.0,
        "lag_ms": lag,
        "over_bound": 0,
        "max_lag_ms": 290,
        "send_late_ms_max": 1.0,
        "start_late_ms": 0.5,
        "error": None,
        "held": True,
    }
    return {
        "schema_version": 2,
        "kind": "live",
        "machine": MACHINE,
        "load_average_after": [0.0],
        "input": {
            "video": None,
            "package": "p",
            "width": 176,
            "height": 144,
            "n_frames": 120,
            "fps": 25.0,
            "sample": True,
            "family": "wav2lip",
            "speech_seconds": 4.2,
        },
        "settings": {"chunk_ms": 20.0},
        "model": {"name": "random", "source": "seed 0", "is_random": True, "backend": "onnx"},
        "server": {
            "options": {"min_session_fps": 20.0, "max_sessions": 32, "max_batch": 8},
            "capacity": {"batch_ms": {"1": 35.0}, "frames_per_second": {"1": 28.6}},
            "capacity_after": {},
            "sessions_after": {"refused": 0},
            "ready_rss_mb": 1000.0,
            "peak_rss_mb": 1100.0,
        },
        "points": [
            {
                "sessions": 1,
                "admitted": 1,
                "refused": 0,
                "refusal": None,
                "per_session": [session],
                "frames_expected": 50,
                "frames_received": 50,
                "frames_dropped": 0,
                "delivered_fps": 25.0,
                "lag_ms": lag,
                "over_bound": 0,
                "max_lag_ms": 290,
                "goal_met": True,
                "errors": 0,
                "held": 1,
                "all_held": True,
            }
        ],
        "runtime": runtime(),
        "goals": {key: goal(key, reason="the package is wav2lip", limits=LIVE_GOALS) for key in LIVE_GOALS},
        "drift": None,
        "notes": [],
        "duration_seconds": 10.0,
    }
