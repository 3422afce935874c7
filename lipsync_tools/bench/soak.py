"""``lipsync bench --soak SECONDS``: one real server under a long, mixed and partly hostile load.

:func:`run_soak` does, in order (every wait bounded):

1. **input** and **server**: as ``--live`` (:func:`.live.start_package_server`): one ``lipsync serve PKG``
   process on 127.0.0.1 with ``--model random`` (or ``identity``), here with run-time loading on: its
   ``--package-dir`` is the package's folder and its ``--catalog`` names the package once more, under
   :data:`CATALOG_ID`, so the package API is driven too;
2. **load**: the 8 clients of :data:`ROSTER`, each a task of this process's event loop doing one thing at a
   time, until the time is up; the first ``warmup_seconds`` of it are the warm-up;
3. **watch**: once a second, the server's RSS (psutil) and whether its process still runs; a server that
   exits is a crash, and the soak stops there;
4. **after**: the clients finish what they were doing (each step is bounded by ``request_timeout``; a long
   wait that the end interrupts is not counted), the server must go back to no session, and its
   ``/metrics`` and the error lines of its log are read.

The clients (their steps cycle; every one of them is bounded in time and in what it holds):

* ``session`` (two of them): live sessions with the Python client (``AsyncLipsyncClient.session``,
  ``realtime`` pacing, JPEG): 0.5-1.5 x ``session_seconds`` of the package's speech from a random place, sent
  as a microphone does (20 ms chunks in real time, :func:`.live._feed`), frames read as they come, until the
  server's ``session_end``;
* ``http_frame``: ``POST /v1/frame``, one at a time, binary and JSON codecs in turn; every 10th request asks
  for a frame past the package's end, every 10th (offset 5) for a package that is not loaded;
* ``stream_frame``: the same as ``frame_request``s on one ``/v1/stream`` WebSocket (a new one every 100);
* ``packages``: load the package by path under a new id, load it again (``conflict``), one frame of it,
  every other cycle a live session on it that the package is unloaded under after 1 s, unload it, unload it
  again (``unknown_package``); load the catalog id, a frame, unload, a frame that loads it on demand, unload;
  a path outside ``--package-dir`` (``forbidden``);
* ``slow_reader``: on a socket with a 4 KiB receive buffer that takes one message at a time, in turn: a
  2 s session read at 5 frames/s, a 2 s session not read at all for the server's ``slow_client_seconds``
  + 2 s after its first frames, and 16 pipelined ``frame_request``s whose replies are read only after that
  long. The server may end the first two with ``too_slow``, or close the socket before the reader got to
  the end (both expected: the reader provoked them); the 16 replies must all come;
* ``vanishing``: in turn, a session left after 0.5-1.5 s of audio by a TCP reset (``SO_LINGER`` 0), the same
  left by closing the socket (no WebSocket close, no ``session_end``), 4 ``frame_request``s on a socket reset
  at once, and a ``POST /v1/frame`` whose body stops half-way before a reset;
* ``malformed``: one probe every ``probe_interval`` s from :func:`.probes.probes`: random bytes, another
  protocol version, declared lengths of 4 GiB and 64 KiB, an unknown type, truncated and trailing bytes,
  messages out of turn, bad audio, text that is not JSON, over ``/v1/stream``; over raw HTTP, random bytes,
  a wrong ``Content-Type``, a ``Content-Length`` of 1 GB, bodies the package API cannot read. Each expects
  one error code, and the WebSocket to close after exactly the closing codes.

Each request ends in one outcome (:data:`OUTCOMES`): ``ok``; ``expected_error``: an error the request
provoked (its probe's code, or ``frame_out_of_range``/``unknown_package``/``conflict``/``forbidden``/
``too_slow`` where the client asked for it) or a documented refusal under load (``overloaded``: admission
refused a session, the engine's queue was full); ``unexpected_error``: anything else: ``internal``, an HTTP
5xx other than ``overloaded``'s 503, another code than the one provoked, a provoked error that did not come,
a connection closed or reset under a client that did nothing wrong, a reply that is not the frame asked for
(another frame, another size, an image that does not decode), a session whose counts do not add up;
``timeout``: no answer within ``request_timeout``.

The goal (:data:`GOAL_LINE`) is reported, not asserted: 0 unexpected errors or timeouts, 0 crashes, and the
server's RSS less than 5 % higher at the end than after the warm-up (each the median of 5 one-second samples,
the first 5 after the warm-up and the last 5 of the load).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from .machine import machine_facts
from .report import SOAK_SCHEMA_VERSION
from .soak_clients import CATALOG_ID, CLIENT_KINDS, OUTCOMES, ROSTER, RSS_WINDOW, SAMPLE_RATE, SoakRun, to_mb

KIND = "soak"
RSS_GROWTH_GOAL_PCT = 5.0
GOAL_LINE = "0 unexpected errors or timeouts, 0 crashes, RSS growth under 5 % after warm-up"

Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class SoakOptions:
    """What ``lipsync bench --soak SECONDS`` runs.

    ``seconds``: how long the load runs (the warm-up included). ``warmup_seconds``: its first part, after
    which the RSS baseline is taken (``None``: 10 % of ``seconds``, at least 5 and at most 60 s, and at most
    half the run). ``input``/``hd``/``seed``/``backend``/``family``/``audio_encoder``: the input and the
    server's model, as :class:`~.live.LiveOptions`; ``model``: ``random`` (random weights: the real
    network's speed) or ``identity`` (no network: the serving machinery alone).
    ``session_seconds``: the mean length of a live session's speech (each is 0.5-1.5 times it);
    ``chunk_ms``: the microphone's chunk. ``min_session_fps``/``max_sessions``: passed to ``lipsync serve``
    (5 frames/s by default, so the soak's up to five concurrent sessions are admitted on a small machine;
    ``max_sessions`` ``None``: the server's 32). ``request_timeout``: the longest a client waits for one
    answer before it counts a timeout. ``probe_interval``: pause between two malformed messages.
    ``work_dir``: where the sample, the package, the catalog and the server log go (``None``: a temporary
    folder, removed afterwards). ``precision``/``device``: the server's ``--precision``/``--device``.
    """

    seconds: float
    warmup_seconds: float | None = None
    input: Path | None = None
    hd: bool = False
    seed: int = 0
    backend: str | None = None
    family: str | None = None
    audio_encoder: str | None = None
    model: str = "random"
    session_seconds: float = 3.0
    chunk_ms: float = 20.0
    min_session_fps: float = 5.0
    max_sessions: int | None = None
    request_timeout: float = 30.0
    probe_interval: float = 0.05
    server_start_seconds: float = 180.0
    work_dir: Path | None = None
    precision: str = "fp32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        from .live import LIVE_MODELS
        from .modes import check_runtime

        if (self.precision, self.device) != ("fp32", "cpu"):
            check_runtime(self.precision, self.device, self.backend)

        if not 5 <= self.seconds <= 7 * 86400:
            raise UsageError(f"--soak {self.seconds:g}: expected 5..604800 seconds, e.g. --soak 600")
        if self.warmup_seconds is not None and not 0 <= self.warmup_seconds <= self.seconds / 2:
            raise UsageError(
                f"warmup_seconds is {self.warmup_seconds:g}; expected 0..{self.seconds / 2:g} (half the run)"
            )
        if not 0.5 <= self.session_seconds <= 60:
            raise UsageError(f"--session-seconds is {self.session_seconds:g}; expected 0.5..60 for --soak")
        if not 5 <= self.chunk_ms <= 200:
            raise UsageError(f"chunk_ms is {self.chunk_ms:g}; expected 5..200 ms")
        if self.model not in LIVE_MODELS:
            raise UsageError(f"--model {self.model!r}: expected {' or '.join(LIVE_MODELS)}")
        if self.backend not in (None, "torch", "onnx"):
            raise UsageError(f"backend {self.backend!r}: expected torch or onnx")
        if not 0 < self.min_session_fps <= 240:
            raise UsageError(f"--min-session-fps is {self.min_session_fps:g}; expected (0, 240] frames/s")
        if self.max_sessions is not None and not 1 <= self.max_sessions <= 10_000:
            raise UsageError(f"--max-sessions is {self.max_sessions}; expected 1..10000")
        if not 1 <= self.request_timeout <= 600:
            raise UsageError(f"request_timeout is {self.request_timeout:g}; expected 1..600 s")
        if not 0.001 <= self.probe_interval <= 10:
            raise UsageError(f"probe_interval is {self.probe_interval:g}; expected 0.001..10 s")

    @property
    def warmup(self) -> float:
        """The warm-up actually used, in seconds."""
        if self.warmup_seconds is not None:
            return self.warmup_seconds
        return min(60.0, max(5.0, self.seconds * 0.1), self.seconds / 2)


# --- running it -------------------------------------------------------------------------------------------


def run_soak(options: SoakOptions, progress: Progress | None = None, ticker: Any = None) -> dict[str, Any]:
    """Run the soak (see the module docstring) and return its result document
    (``lipsync_tools/bench/schemas/soak.schema.json``).

    ``progress`` gets one line per phase and one a minute; ``ticker`` (a
    :class:`lipsync_tools.progress.Progress`, e.g. the CLI's Rich bar) advances once a second.
    Raises :class:`~lipsync_tools.errors.LipsyncError` subclasses for a bad input or a server that does not
    start; a server that crashes during the soak is reported in the result, not raised.
    """
    import json

    from .live import input_options_of, speech_of, start_package_server
    from .runner import prepare_input, timed_progress, work_folder

    started = time.perf_counter()
    say = timed_progress(progress)
    facts = machine_facts()
    with ExitStack() as stack:
        work = work_folder(stack, options.work_dir, "lipsync-bench-soak-")
        bench_input = prepare_input(input_options_of(options), work, say)
        speech = speech_of(bench_input, "the soak")
        package = bench_input.package.resolve()
        catalog = work / "soak-catalog.json"
        catalog.write_text(json.dumps({"packages": {CATALOG_ID: {"path": str(package)}}}))
        serve_options = [
            "--min-session-fps",
            f"{options.min_session_fps:g}",
            "--package-dir",
            str(package.parent),
            "--catalog",
            str(catalog.resolve()),
        ]
        if options.max_sessions is not None:
            serve_options += ["--max-sessions", str(options.max_sessions)]
        server = start_package_server(
            bench_input,
            work,
            say,
            name="soak",
            model=options.model,
            seed=options.seed,
            backend=options.backend,
            serve_options=tuple(serve_options),
            runtime_loading=True,
            timeout=options.server_start_seconds,
            precision=options.precision,
            device=options.device,
        )
        stack.callback(server.stop)
        model = {k: v for k, v in server.ready.get("model", {}).items() if k != "models"}
        if model.get("is_random"):
            say("model: RANDOM weights: the real network's speed; they move pixels, they do not lip-sync")
        say(
            f"soak: {len(ROSTER)} clients for {options.seconds:g} s ({options.warmup:g} s of warm-up): "
            + ", ".join(f"{n} {k}" for k, n in Counter(ROSTER).items())
        )
        soak = asyncio.run(_run(options, server, bench_input, speech, package.name, say, ticker))
        say("server: stopping")
        server.stop()
        log = _log_errors(server)
    result = _document(options, soak, facts, bench_input, speech, model, server, log)
    result["duration_seconds"] = round(time.perf_counter() - started, 2)
    return result


async def _run(
    options: SoakOptions,
    server: Any,
    bench_input: Any,
    speech: np.ndarray,
    package_name: str,
    say: Progress,
    ticker: Any,
) -> SoakRun:
    import httpx
    import psutil

    from .live import _readyz, _wait_idle

    soak = SoakRun(options, server.url, server, bench_input, speech, package_name, say, ticker)
    with contextlib.suppress(psutil.Error):
        soak.rss.start = int(psutil.Process(server.pid).memory_info().rss)
    if ticker is not None:
        ticker.start("soak", math.ceil(options.seconds))
    clients = {
        "session": soak.session_client,
        "http_frame": soak.http_frame_client,
        "stream_frame": soak.stream_frame_client,
        "packages": soak.packages_client,
        "slow_reader": soak.slow_reader_client,
        "vanishing": soak.vanishing_client,
        "malformed": soak.malformed_client,
    }
    soak.started_at = soak.tally.t0 = time.monotonic()
    tasks = [
        asyncio.create_task(clients[kind](slot), name=f"soak-{kind}-{slot}")
        for slot, kind in enumerate(ROSTER)
    ]
    watcher = asyncio.create_task(soak.watch(soak.started_at + options.seconds))
    failed: BaseException | None = None
    try:
        done, _ = await asyncio.wait({watcher, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        if watcher not in done:  # a client ended before the time was up: a bug of the benchmark
            failed = next((t.exception() for t in done if t.exception() is not None), None)
            soak.stop.set()
        else:  # each client finishes what it was doing (bounded); say who is slow to
            grace = time.monotonic() + options.request_timeout + 20
            pending = {t for t in tasks if not t.done()}
            while pending and time.monotonic() < grace:
                _, pending = await asyncio.wait(pending, timeout=min(5.0, grace - time.monotonic()))
                if pending:
                    say("soak: waiting for " + ", ".join(sorted(t.get_name() for t in pending)))
    finally:
        soak.stop.set()
        for task in [watcher, *tasks]:
            task.cancel()
        results = await asyncio.gather(watcher, *tasks, return_exceptions=True)
    if ticker is not None:
        ticker.finish()
    failed = failed or next((r for r in results if isinstance(r, Exception)), None)
    if failed is not None:
        raise failed
    if soak.ended_at is None:
        soak.ended_at = time.monotonic()
    say(f"soak: the clients finished their last steps {time.monotonic() - soak.ended_at:.1f} s after the end")
    if not soak.crashes and server.process.poll() is None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as http:
            await _wait_idle(http, 1.0)
            with contextlib.suppress(psutil.Error):
                soak.rss.idle_end = int(psutil.Process(server.pid).memory_info().rss)
            soak.sessions_after = (await _readyz(http)).get("sessions", {})
            soak.metrics_after = _metrics(await http.get("/metrics"))
    elif server.process.poll() is not None and not soak.crashes:
        soak.crash(time.monotonic() - soak.started_at)
    return soak


_METRIC = re.compile(r"^(lipsync_[a-z_]+)(?:\{([^}]*)\})?\s+(\S+)$")


def _metrics(response: Any) -> dict[str, Any]:
    """What the soak reads of the server's ``/metrics``: errors by code, disconnects, sessions, packages."""
    out: dict[str, Any] = {
        "errors_by_code": {},
        "disconnects": {},
        "active_sessions": None,
        "sessions_total": None,
        "sessions_refused_total": None,
        "packages_loaded": None,
    }
    if response.status_code != 200:
        return out
    for line in response.text.splitlines():
        match = _METRIC.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        label = dict(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        count = int(number) if number.is_integer() else number
        if name == "lipsync_errors_total":
            out["errors_by_code"][label.get("code", "?")] = count
        elif name == "lipsync_disconnects_total":
            out["disconnects"][f"pending={label.get('pending', '?')}"] = count
        elif name == "lipsync_active_sessions":
            out["active_sessions"] = count
        elif name == "lipsync_sessions_total":
            out["sessions_total"] = count
        elif name == "lipsync_sessions_refused_total":
            out["sessions_refused_total"] = count
        elif name == "lipsync_packages_loaded":
            out["packages_loaded"] = count
    return out


def _log_errors(server: Any) -> dict[str, Any]:
    """The server log's ERROR lines and tracebacks (it logs at WARNING and above)."""
    launch = server.launch
    path = launch.log_dir / f"{launch.name}-{launch.kind}.err"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    errors = [line for line in lines if line.startswith(("ERROR", "CRITICAL"))]
    return {
        "error_lines": len(errors),
        "tracebacks": sum(line.startswith("Traceback") for line in lines),
        "warning_lines": sum(line.startswith("WARNING") for line in lines),
        "first_errors": [line[:300] for line in errors[:5]],
        "path": str(path),
    }


def _document(
    options: SoakOptions,
    soak: SoakRun,
    facts: dict[str, Any],
    bench_input: Any,
    speech: np.ndarray,
    model: dict[str, Any],
    server: Any,
    log: dict[str, Any],
) -> dict[str, Any]:
    from .runner import document_head

    tally, rss = soak.tally, soak.rss
    by_kind = {kind: {o: int(tally.outcomes[kind][o]) for o in OUTCOMES} for kind in CLIENT_KINDS}
    by_outcome = {o: sum(k[o] for k in by_kind.values()) for o in OUTCOMES}
    after = int(np.median(rss.after_warmup)) if len(rss.after_warmup) == RSS_WINDOW else None
    growth = None if after is None or rss.end is None else round((rss.end - after) / after * 100, 2)
    ran = (soak.ended_at or time.monotonic()) - soak.started_at
    metrics = soak.metrics_after
    goal = {
        "line": GOAL_LINE,
        "unexpected_errors": tally.unexpected_total,
        "timeouts": by_outcome["timeout"],
        "crashes": len(soak.crashes),
        "rss_growth_pct": growth,
        "rss_growth_limit_pct": RSS_GROWTH_GOAL_PCT,
    }
    goal["met"] = bool(
        goal["unexpected_errors"] == 0
        and goal["timeouts"] == 0
        and goal["crashes"] == 0
        and growth is not None
        and growth < RSS_GROWTH_GOAL_PCT
    )
    result: dict[str, Any] = {
        **document_head(
            SOAK_SCHEMA_VERSION, KIND, facts, bench_input, options, speech.size / SAMPLE_RATE, model
        ),
        "server": {
            "options": {
                "model": options.model,
                "backend": options.backend,
                "max_batch": 8,
                "min_session_fps": options.min_session_fps,
                "max_sessions": options.max_sessions,
                "runtime_loading": True,
                "catalog_id": CATALOG_ID,
            },
            "ready_rss_mb": to_mb(int(server.ready.get("rss_bytes", 0))),
            "exit_code": server.process.returncode if soak.crashes else None,
            "sessions_after": soak.sessions_after,
            "metrics_after": metrics,
            "log": log,
        },
        "clients": [{"slot": slot, "kind": kind} for slot, kind in enumerate(ROSTER)],
        "run": {
            "seconds": options.seconds,
            "warmup_seconds": options.warmup,
            "ran_seconds": round(ran, 2),
            "stopped_early": bool(soak.crashes),
        },
        "requests": {"total": sum(by_outcome.values()), "by_outcome": by_outcome, "by_kind": by_kind},
        "errors_by_code": {
            code: {"expected": int(c["expected"]), "unexpected": int(c["unexpected"])}
            for code, c in sorted(tally.codes.items())
        },
        "unexpected_errors": {"total": tally.unexpected_total, "listed": tally.unexpected},
        "crashes": soak.crashes,
        "sessions": {
            k: int(tally.sessions[k])
            for k in ("started", "completed", "frames_received", "frames_expected", "frames_dropped")
        },
        "rss": {
            "start_mb": to_mb(rss.start),
            "after_warmup_mb": None if after is None else to_mb(after),
            "per_minute": rss.per_minute,
            "end_mb": None if rss.end is None else to_mb(rss.end),
            "idle_end_mb": None if rss.idle_end is None else to_mb(rss.idle_end),
            "peak_mb": to_mb(rss.peak),
            "growth_pct": growth,
            "samples": rss.samples,
        },
        "frame_latency_ms": {transport: r.stats_ms() for transport, r in tally.latency.items()},
        "goal": goal,
    }
    result["notes"] = _notes(result)
    return result


def _notes(result: dict[str, Any]) -> list[str]:
    notes = []
    if result["model"].get("is_random"):
        notes.append("random weights: the speed of the real network; they move pixels, they do not lip-sync")
    notes.append(
        f"the clients run in this process on the same machine as the server "
        f"({result['machine']['cores_logical']} logical cores): their CPU time is part of the figures"
    )
    for crash in result["crashes"]:
        notes.append(f"the server exited with code {crash['exit_code']} after {crash['at_seconds']:g} s")
    metrics = result["server"]["metrics_after"]
    internal = metrics.get("errors_by_code", {}).get("internal", 0) if metrics else 0
    if internal:
        reached = result["errors_by_code"].get("internal", {}).get("unexpected", 0)
        notes.append(
            f"the server counted {internal} internal error(s) (/metrics: lipsync_errors_total, code "
            f"internal); {reached} of them reached a client here, the others were for clients that had gone"
        )
    log = result["server"]["log"]
    if log["error_lines"] or log["tracebacks"]:
        first = log["first_errors"][0] if log["first_errors"] else ""
        notes.append(
            f"the server log has {log['error_lines']} ERROR line(s) and {log['tracebacks']} traceback(s); "
            f"first: {first}"
        )
    after = result["server"]["sessions_after"]
    if after and after.get("sessions", 0):
        notes.append(f"{after['sessions']} session(s) still counted by the server after every client left")
    if result["rss"]["growth_pct"] is None:
        notes.append("no RSS growth figure: the run was too short for the warm-up and end samples")
    return notes


__all__ = [
    "CATALOG_ID",
    "CLIENT_KINDS",
    "GOAL_LINE",
    "OUTCOMES",
    "ROSTER",
    "SoakOptions",
    "run_soak",
]
