"""Documents of the benchmarks' schemas, made without a run (for the checker, the tables and the CLI)."""

from __future__ import annotations

from typing import Any

import pytest

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
