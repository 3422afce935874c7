"""The benchmarks' result documents: their schemas, a checker, and the tables (Rich and Markdown) of them.

One row builder (:func:`tables`) feeds both renderers, so the terminal and ``--markdown`` always show
the same numbers. ``--json`` writes the document itself. Its contract for CI is a JSON Schema file (draft
2020-12) per kind of document, in ``lipsync_tools/bench/schemas/``: ``compare.schema.json`` (``--compare``),
``live.schema.json`` (``--live``, ``"kind": "live"``), ``soak.schema.json`` (``--soak``, ``"kind": "soak"``),
``scaleout.schema.json`` (``--ray``, ``"kind": "scale-out"``).
Any validator reads them; :func:`check_result` is lipsync-tools' own (it picks the file by the document's
``kind`` and refuses another ``schema_version`` first). The version constants below stay in code: each file's
``schema_version`` is a ``const`` a test keeps equal to its constant.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LipsyncError
from .machine import hardware_line

COMPARE_SCHEMA_VERSION = 4
"""The ``--compare`` document's version (``schema_version``); :func:`check_result` refuses another one.

2: ``input.family`` and the ``families`` section. 3: ``startup.audio_features_s`` renamed
``startup.feature_mapping_s`` (it is the server's ``feature_mapping`` phase: mapping and checking the
package's hot arrays, not computing audio features). 4 (issue 12): each mode's ``runtime`` (the precision and
device its server ran, its measured capacity), the ``precision`` section (fp32 against int8 on the bench's
package) and ``headline.goals``.
"""

LIVE_SCHEMA_VERSION = 2
"""The ``--live`` document's version (``schema_version``); :func:`check_result` refuses another one.

2 (issue 12): ``runtime`` (the precision and device the server ran), ``held`` per session and ``held`` /
``all_held`` per point (the session delivered at least ``settings.target_fps`` with every frame on time), and
``goals``.
"""

SOAK_SCHEMA_VERSION = 1
"""The ``--soak`` document's version (``schema_version``); :func:`check_result` refuses another one."""

SCALEOUT_SCHEMA_VERSION = 1
"""The ``--ray`` document's version (``schema_version``); :func:`check_result` refuses another one."""

SCHEMA_DIR = Path(__file__).with_name("schemas")
"""Where the JSON Schema files are (shipped as package data: ``lipsync_tools/bench/schemas/*.json``)."""


@dataclass(frozen=True, kw_only=True)
class DocumentKind:
    """One kind of result document: its schema file's stem (``name``), the ``kind`` the document carries
    (``None``: a ``--compare`` document carries none), the option that writes it and the version this
    lipsync-tools reads."""

    name: str
    kind: str | None
    option: str
    version: int

    @property
    def schema_file(self) -> Path:
        """Its JSON Schema file, ``SCHEMA_DIR / "<name>.schema.json"``."""
        return SCHEMA_DIR / f"{self.name}.schema.json"


DOCUMENT_KINDS: dict[str | None, DocumentKind] = {
    None: DocumentKind(name="compare", kind=None, option="--compare", version=COMPARE_SCHEMA_VERSION),
    "live": DocumentKind(name="live", kind="live", option="--live", version=LIVE_SCHEMA_VERSION),
    "soak": DocumentKind(name="soak", kind="soak", option="--soak", version=SOAK_SCHEMA_VERSION),
    "scale-out": DocumentKind(name="scaleout", kind="scale-out", option="--ray",
                              version=SCALEOUT_SCHEMA_VERSION),
}
"""The document kinds by the ``kind`` key they carry."""


def schema_path(name: str) -> Path:
    """The JSON Schema file of ``name``'s documents (``"compare"``, ``"live"``, ``"soak"`` or ``"scaleout"``):
    the path a CI job gives its validator. Raises :class:`SchemaError` for another name."""
    for spec in DOCUMENT_KINDS.values():
        if spec.name == name:
            return spec.schema_file
    names = ", ".join(spec.name for spec in DOCUMENT_KINDS.values())
    raise SchemaError(f"no bench result schema is named {name!r}; expected one of {names}")


def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``name``'s documents (``"compare"``, ``"live"``, ``"soak"`` or
    ``"scaleout"``), read from its file: a new dict on each call, for :func:`check_result`'s ``schema`` or
    another validator."""
    schema: dict[str, Any] = json.loads(schema_path(name).read_text(encoding="utf-8"))
    return schema


def goal(key: str, measured: float | None = None, *, limits: dict[str, tuple[str, float, str]],
         reason: str | None = None, source: str | None = None) -> dict[str, Any]:
    """One goal's entry (the schemas' ``goal``): ``limits[key]`` is (the goal in words, its limit, ``"<="``
    or ``">="``); ``measured`` is compared with the limit, or, with a ``reason`` (what the run lacked),
    ``measured`` and ``met`` are null. ``source``: where the measured figure and the limit came from."""
    text, limit, comparison = limits[key]
    met = None
    if reason is None and measured is not None:
        met = measured <= limit if comparison == "<=" else measured >= limit
    return {"goal": text, "measured": None if reason else measured, "limit": limit, "comparison": comparison,
            "met": None if reason else met, "reason": reason, "source": source}


class SchemaError(LipsyncError, ValueError):
    """A result document that does not follow its schema (``lipsync_tools/bench/schemas/``)."""


def check_result(document: Any, schema: dict[str, Any] | None = None, where: str = "result") -> None:
    """Raise :class:`SchemaError` naming the first place where ``document`` breaks ``schema``.

    Without ``schema``: picked by the document's ``kind`` (``live.schema.json`` for ``"live"``,
    ``soak.schema.json`` for ``"soak"``, ``scaleout.schema.json`` for ``"scale-out"``, ``compare.schema.json``
    without one), and a document of another ``schema_version`` than this version reads is refused before
    anything else is checked. ``schema``: a JSON Schema (draft 2020-12) dict, e.g. :func:`load_schema`'s. The
    place is a path from ``where`` (``result.points[0].per_session[1].lag_ms``); the message says what was
    found there and what the schema expects. Where several places break it, the one
    ``jsonschema.exceptions.best_match`` ranks first (the shallowest) is named: the same one for the same
    document.

    Stricter than the JSON Schema standard in one way, as the checker before these files was: an
    ``integer`` is a Python ``int`` (``1.0`` is refused) and a ``number`` an ``int`` or a ``float`` (NumPy
    integers are refused), so a document that passes here is written by :func:`json.dumps` as it was meant.
    """
    if schema is None:
        kind = document.get("kind") if isinstance(document, dict) else None
        if not isinstance(kind, str | None) or kind not in DOCUMENT_KINDS:
            kinds = ", ".join(k for k in DOCUMENT_KINDS if k is not None)
            raise SchemaError(f"{where}.kind is {kind!r}; expected {kinds} or none (--compare)")
        spec = DOCUMENT_KINDS[kind]
        version = document.get("schema_version") if isinstance(document, dict) else None
        if version != spec.version or isinstance(version, bool):
            raise SchemaError(
                f"{where}.schema_version is {version!r}: a {spec.option} document of another version; this "
                f"lipsync-tools reads version {spec.version} (run the benchmark again with it)"
            )
        validator = _validator(spec.name)
    else:
        validator = _strict_validator()(schema)
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(document))
    if error is not None:
        raise SchemaError(_describe(error, where))


def is_live(document: Any) -> bool:
    """Whether ``document`` is a ``--live`` result (``"kind": "live"``)."""
    return isinstance(document, dict) and document.get("kind") == "live"


def is_soak(document: Any) -> bool:
    """Whether ``document`` is a ``--soak`` result (``"kind": "soak"``)."""
    return isinstance(document, dict) and document.get("kind") == "soak"


def is_scaleout(document: Any) -> bool:
    """Whether ``document`` is a ``--ray`` result (``"kind": "scale-out"``)."""
    return isinstance(document, dict) and document.get("kind") == "scale-out"


@functools.cache
def _strict_validator() -> Any:
    """``Draft202012Validator`` whose ``integer`` is an ``int`` and ``number`` an ``int`` or ``float``.

    Why: the standard's ``integer`` admits ``1.0`` and jsonschema's ``number`` any ``numbers.Number``
    (NumPy scalars among them); the documents are built in Python and must be JSON-ready, with counts
    written as integers, which the hand-written checker these files replaced enforced. bool is never either.
    """
    from jsonschema import Draft202012Validator, validators

    def is_integer(_: Any, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def is_number(_: Any, value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    checker = Draft202012Validator.TYPE_CHECKER.redefine_many({"integer": is_integer, "number": is_number})
    return validators.extend(Draft202012Validator, type_checker=checker)


@functools.cache
def _validator(name: str) -> Any:
    """The strict validator of ``name``'s schema file, read once (validators do not change what they hold)."""
    return _strict_validator()(load_schema(name))


_TYPE_NAMES = {
    "integer": "int",
    "number": "int or float",
    "string": "str",
    "boolean": "bool",
    "null": "null",
    "object": "an object",
    "array": "a list",
}


def _describe(error: Any, where: str) -> str:
    """The message of a ``jsonschema`` error: where (``result.a.b[0]``), what was found, what was expected."""
    place = where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    found, expected = error.instance, error.validator_value
    if error.validator == "required":
        missing = [key for key in expected if key not in found]
        return f"{place} lacks {', '.join(missing)}"
    if error.validator == "additionalProperties" and expected is False:
        allowed = list(error.schema.get("properties", {}))
        extra = [key for key in found if key not in allowed]
        return (f"{place} has unexpected key(s) {', '.join(map(repr, extra))}; its schema allows only "
                f"{', '.join(allowed) or 'no key'}")
    if error.validator == "type":
        types = [expected] if isinstance(expected, str) else list(expected)
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
        return f"{place} is {_found(found)}, expected {names}"
    if error.validator == "const":
        return f"{place} is {found!r}, expected {expected!r}"
    if error.validator == "enum":
        return f"{place} is {found!r}, expected one of {', '.join(map(repr, expected))}"
    return f"{place} breaks its schema ({error.validator}): {error.message}"


def _found(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    return "null" if value is None else type(value).__name__


# --- tables -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A titled table of strings: what both the Rich and the Markdown renderers print."""

    title: str
    header: list[str]
    rows: list[list[str]]


def _ms(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _x(value: Any) -> str:
    return "–" if value is None else f"{float(value):.2f}x"


def tables(result: dict[str, Any]) -> list[Table]:
    """Every table of the report, in order."""
    if is_live(result):
        return live_tables(result)
    if is_soak(result):
        return soak_tables(result)
    if is_scaleout(result):
        return scaleout_tables(result)
    modes: dict[str, Any] = result["modes"]
    names = list(modes)
    out: list[Table] = []

    header = ["component"] + [f"{m} median / p90 ms" for m in names]
    rows = []
    for label in result["components"]:
        rows.append(
            [label]
            + [
                f"{_ms(modes[m]['stages'][label]['median_ms'])} / {_ms(modes[m]['stages'][label]['p90_ms'])}"
                for m in names
            ]
        )
    for label, key in (
        ("server total", "server_total"),
        ("end-to-end (client)", "end_to_end"),
        ("non-model (end-to-end minus inference)", "non_model"),
    ):
        rows.append(
            [label] + [f"{_ms(modes[m][key]['median_ms'])} / {_ms(modes[m][key]['p90_ms'])}" for m in names]
        )
    rows.append(["FPS (one client, sequential)"] + [f"{modes[m]['fps']:.2f}" for m in names])
    speed = result["headline"]["speedup_vs_original"]
    rows.append(["speed-up vs original, end-to-end"] + [_x(speed[m]["end_to_end"]) for m in names])
    rows.append(["speed-up vs original, non-model"] + [_x(speed[m]["non_model"]) for m in names])
    rows.append(["frames measured (checked)"] + [str(modes[m]["frames"]) for m in names])
    rows.append(["model precision that ran, device"] + [_ran(modes[m]["runtime"]) for m in names])
    out.append(
        Table(
            "Per component, one client (FrameReply.timings; transport = client minus server total)",
            header,
            rows,
        )
    )

    h = result["headline"]
    out.append(
        Table(
            "Headline",
            ["figure", "measured", "goal"],
            [
                [
                    "non-model time, original / preloaded",
                    _x(h["non_model_ratio_original_over_preloaded"]),
                    f">= {h['goal_non_model_ratio']:g}x",
                ],
                [
                    "preloaded end-to-end over its model time",
                    "–" if h["preloaded_overhead_pct"] is None else f"+{h['preloaded_overhead_pct']:.1f} %",
                    f"<= {h['goal_overhead_pct']:g} %",
                ],
            ],
        )
    )

    out.append(goals_table(result["headline"]["goals"], "Issue 12's goals, as this run measured them"))

    scaling = result["scaling"]
    levels = sorted({p["clients"] for points in scaling.values() for p in points})
    rows = []
    for m, points in scaling.items():
        by_clients = {p["clients"]: p for p in points}
        rows.append(
            [m]
            + [
                f"{by_clients[c]['total_fps']:.1f} / {by_clients[c]['per_client_fps']:.1f} / "
                f"{_ms(by_clients[c]['latency_median_ms'], 0)}"
                if c in by_clients
                else "–"
                for c in levels
            ]
        )
    out.append(
        Table(
            "Concurrency scaling: total FPS / FPS per client / median latency ms",
            ["mode"] + [f"{c} client{'s' if c > 1 else ''}" for c in levels],
            rows,
        )
    )

    rows = []
    for m in names:
        s, mem = modes[m]["startup"], modes[m]["memory"]
        rows.append(
            [
                m,
                f"{s['model_load_s']:.2f}",
                f"{s['frame_preload_s']:.3f}",
                f"{s['feature_mapping_s']:.3f}",
                f"{s['package_open_s']:.3f}",
                f"{s['warmup_s']:.2f}",
                f"{s['server_total_s']:.2f}",
                f"{s['process_to_ready_s']:.2f}",
                f"{mem['ready_rss_mb']:.0f}",
                f"{mem['peak_rss_mb']:.0f}",
            ]
        )
    out.append(
        Table(
            "Startup (s) and memory (MB) per server process",
            [
                "mode",
                "model load",
                "frame preload",
                "feature mapping",
                "open",
                "warm-up",
                "server total",
                "spawn to ready",
                "RSS at ready",
                "peak RSS",
            ],
            rows,
        )
    )

    rows = [
        [
            b["backend"],
            str(b["batch"]),
            _ms(b["ms_per_frame_median"]),
            _ms(b["ms_per_frame_p90"]),
            _ms(b["prepare_ms"], 3),
            b["note"],
        ]
        for b in result["backends"]
    ]
    out.append(
        Table(
            "Model alone, ms per frame (random Wav2Lip weights, real crops and mels)",
            ["backend", "batch", "median", "p90", "input build (in median)", "note"],
            rows,
        )
    )
    out.append(precision_table(result["precision"]))
    family_rows = [
        [f["family"], f["audio_mode"], f["backend"], str(f["batch"]), _ms(f["ms_per_frame_median"]),
         _ms(f["ms_per_frame_p90"]), f["note"]]
        for f in result.get("families", [])
    ]
    cold = result.get("cold_start")
    if cold:
        out.append(
            Table(
                "Cold start: a package loaded on demand by its first frame (--catalog)",
                ["first frame ms", "next frames ms", "RSS of first load (with model) MB",
                 "RSS of a package MB", "decoded frames MB", "package / decoded"],
                [[_ms(cold["first_frame_ms"]), _ms(cold["warm_frame_ms"]), f"{cold['first_load_rss_mb']:.1f}",
                  f"{cold['package_rss_mb']:.1f}", f"{cold['decoded_frames_mb']:.1f}",
                  str(cold["rss_over_decoded"])]],
            )
        )
    if family_rows:
        out.append(
            Table(
                "Every model family's network, ms per frame (random weights: real speed, not lip-sync)",
                ["family", "audio", "runtime", "batch", "median", "p90", "note"],
                family_rows,
            )
        )
    return out


def _ran(runtime: dict[str, Any]) -> str:
    """``int8 on cpu``, or ``fp32 on cpu (int8 refused: 27.1 dB)`` when the quality gate refused int8."""
    text = f"{runtime['precision']} on {runtime['device']}"
    if runtime["precision_requested"] != runtime["precision"]:
        quality = runtime.get("quality") or {}
        psnr = quality.get("psnr_db")
        shown = f": {psnr:.1f} dB" if psnr is not None else ""
        text += f" ({runtime['precision_requested']} refused{shown})"
    return text


def _model_runtime(model: dict[str, Any]) -> str:
    """A ready event's model (or a document's ``model``) as ``int8 on cpu (asked int8, PSNR 35.2 dB)``."""
    ran = model.get("precision", "fp32")
    asked = model.get("precision_requested", ran)
    quality = model.get("quality") or {}
    psnr = quality.get("psnr_db")
    extra = [f"asked {asked}"] if asked != ran else []
    if quality:
        extra.append("int8 output equals fp32's" if psnr is None else f"int8 PSNR {psnr:.1f} dB vs fp32")
    return f"{ran} on {model.get('device', 'cpu')}" + (f" ({', '.join(extra)})" if extra else "")


def _goal_measured(g: dict[str, Any]) -> str:
    if g["met"] is None:
        return "–"
    if g["measured"] is None:
        return "identical" if g["met"] else "–"
    return f"{g['measured']:.3g}"


def goals_table(goals: dict[str, dict[str, Any]], title: str) -> Table:
    """The issue's goals (schema ``GOAL``): measured, limit, met (``–`` and the reason when not measured)."""
    rows = [
        [
            g["goal"],
            _goal_measured(g),
            f"{g['comparison']} {g['limit']:g}",
            "not measured" if g["met"] is None else _yes(g["met"]),
            g["reason"] or g["source"] or "",
        ]
        for g in goals.values()
    ]
    return Table(title, ["goal", "measured", "limit", "met", "how measured / why not"], rows)


def precision_table(section: dict[str, Any]) -> Table:
    """The ``precision`` section: ms per frame of fp32, int8 (and fp16) at batch 1 and batched, their ratio to
    fp32 and PSNR against it; the build and load times in the title."""
    build, cached = section["int8_build_s"], section["int8_cached_load_s"]
    times = f"fp32 load {section['fp32_load_s']:.1f} s (export included)"
    if build is not None and cached is not None:
        times += (f"; int8 first build {build:.1f} s (calibration + quantization + check), cached load "
                  f"{cached:.1f} s")
    quality = section["quality"]
    gate = ""
    if quality is not None:
        gate = f"; quality gate ({quality['threshold_db']:g} dB on {quality['frames']} held-out frames): " + (
            "passed" if quality["passed"] else "REFUSED (a server runs fp32)"
        )
    rows = [
        [r["precision"], str(r["batch"]), _ms(r["ms_per_frame_median"]), _ms(r["ms_per_frame_p90"]),
         _x(r["over_fp32"]), _ms(r["psnr_db_vs_fp32"], 1), r["note"]]
        for r in section["rows"]
    ]
    return Table(
        f"Precision: the package's {section['family']} model on ONNX Runtime ({section['device']}), ms per "
        f"frame; {times}{gate}",
        ["precision", "batch", "median", "p90", "over fp32", "PSNR vs fp32 dB", "note"],
        rows,
    )


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The lines above the tables: machine, load, input, model."""
    if is_live(result):
        return live_summary_lines(result)
    if is_soak(result):
        return soak_summary_lines(result)
    if is_scaleout(result):
        return scaleout_summary_lines(result)
    i, machine = result["input"], result["machine"]
    model = result.get("model", {})
    source = "sample talking head" if i["sample"] else (i["video"] or i["package"])
    return [
        f"machine: {hardware_line(machine)}",
        f"load average before / after: {machine['load_average']} / {result['load_average_after']}",
        f"input: {source}, {i['width']}x{i['height']}, {i['n_frames']} frames at {i['fps']:g} fps",
        f"model: {model.get('name', '?')} ({model.get('source', '?')}) on {model.get('backend', '?')}, "
        f"{_model_runtime(model)}"
        + (" (random weights: the speed of the real network, the output is not lip-sync)"
           if model.get("is_random") else "")
        + f"; run took {result['duration_seconds']:.0f} s",
        *[f"note: {n}" for n in result["notes"]],
    ]


def _lag(stats: dict[str, Any], keys: tuple[str, ...] = ("median", "p99")) -> str:
    return " / ".join(_ms(stats[k], 0) for k in keys)


def _dropped(dropped: int, expected: int) -> str:
    return f"{dropped} of {expected} ({100 * dropped / expected:.1f} %)" if expected else str(dropped)


def live_tables(result: dict[str, Any]) -> list[Table]:
    """The ``--live`` report's tables: the points, their sessions, the drift session, the model's capacity."""
    out: list[Table] = []
    target = result["settings"].get("target_fps", 25.0)
    rows = []
    for p in result["points"]:
        rows.append(
            [
                str(p["sessions"]),
                f"{p['admitted']} / {p['refused']}",
                _ms(p["delivered_fps"], 1),
                _lag(p["lag_ms"]),
                _ms(p["lag_ms"]["max"], 0),
                _dropped(p["frames_dropped"], p["frames_expected"]),
                f"{p['held']} / {p['sessions']}" + ("" if p["all_held"] else " (NOT all)"),
                f"{p['over_bound']} (bound {p['max_lag_ms'] if p['max_lag_ms'] is not None else '–'} ms)",
            ]
        )
    out.append(
        Table(
            "Live sessions at the speed of speech (lag = arrival minus when the frame's audio plays)",
            ["sessions", "admitted / refused", "delivered fps (median session)", "lag median / p99 ms",
             "lag max ms", "dropped", f"held {target:g} fps on time",
             "over bound (SessionStarted.max_lag_ms)"],
            rows,
        )
    )
    title = (f"Issue 12's live goals (a session holds when it delivers at least {target:g} frames/s, every "
             "frame within the server's bound)")
    out.append(goals_table(result["goals"], title))
    rows = []
    for p in result["points"]:
        for s in p["per_session"]:
            rows.append(
                [
                    str(p["sessions"]),
                    str(s["session"]),
                    str(s["frames_expected"]),
                    "–" if s["frames_sent"] is None else str(s["frames_sent"]),
                    "–" if s["frames_dropped"] is None else str(s["frames_dropped"]),
                    str(s["silent_frames"]),
                    f"{s['delivered_fps']:.1f}",
                    _lag(s["lag_ms"], ("median", "p90", "p99", "max")),
                    f"{s['over_bound']} / {s['max_lag_ms']}",
                    "–" if s.get("bytes_per_frame") is None else f"{s['bytes_per_frame'] / 1024:.1f} KiB",
                    "–" if s.get("encode_ms") is None else f"{s['encode_ms']:.2f}",
                    f"{s['start_late_ms']:.1f} / {s['send_late_ms_max']:.1f}",
                    s["error"] or "",
                ]
            )
    image = result.get("settings", {}).get("image", "jpeg")
    out.append(
        Table(
            f"Per admitted session (images: {image}; silent: frames of silence, sent without the model; "
            "bytes and encode time: frames the model made)",
            ["sessions", "session", "frames expected", "sent", "dropped", "silent", "delivered fps",
             "lag median / p90 / p99 / max ms", "over bound / bound ms", "bytes per frame",
             "server encode ms (median)", "client chunk 0 / any chunk late ms", "error"],
            rows,
        )
    )
    d = result.get("drift")
    if d is not None:
        out.append(
            Table(
                f"Drift: one session of {d['seconds']:g} s of speech",
                ["frames expected", "sent", "dropped", "drift frames (sent + dropped - expected)",
                 "timeline (last frame + 1 - expected)", "lag first 10 % median / p99 ms",
                 "lag last 10 % median / p99 ms", "over bound / bound ms"],
                [
                    [
                        str(d["frames_expected"]),
                        "–" if d["frames_sent"] is None else str(d["frames_sent"]),
                        "–" if d["frames_dropped"] is None else str(d["frames_dropped"]),
                        "–" if d["drift_frames"] is None else str(d["drift_frames"]),
                        "–" if d["timeline_drift_frames"] is None else str(d["timeline_drift_frames"]),
                        _lag(d["lag_ms_first_10pct"]),
                        _lag(d["lag_ms_last_10pct"]),
                        f"{d['over_bound']} / {d['max_lag_ms']}",
                    ]
                ],
            )
        )
    before, after = result["server"]["capacity"], result["server"]["capacity_after"]
    batches = sorted({*before.get("batch_ms", {}), *after.get("batch_ms", {})}, key=int)
    if batches:

        def cell(capacity: dict[str, Any], key: str, batch: str, digits: int) -> str:
            return _ms(capacity.get(key, {}).get(batch), digits)

        out.append(
            Table(
                "The server's model capacity (GET /v1/models): measured at warm-up, then as it served",
                ["batch", "ms per call, at start", "frames/s, at start", "ms per call, at end",
                 "frames/s, at end"],
                [
                    [b, cell(before, "batch_ms", b, 1), cell(before, "frames_per_second", b, 1),
                     cell(after, "batch_ms", b, 1), cell(after, "frames_per_second", b, 1)]
                    for b in batches
                ],
            )
        )
    return out


def live_summary_lines(result: dict[str, Any]) -> list[str]:
    """The lines above the ``--live`` tables: machine, load, input, model, server options, refusal, drift."""
    i, machine, model = result["input"], result["machine"], result.get("model", {})
    options = result["server"]["options"]
    source = "sample talking head" if i["sample"] else (i["video"] or i["package"])
    lines = [
        f"machine: {hardware_line(machine)}",
        f"load average before / after: {machine['load_average']} / {result['load_average_after']}",
        f"input: {source}, {i['width']}x{i['height']} at {i['fps']:g} fps ({i['family']}); its "
        f"{i['speech_seconds']:.1f} s of speech, looped, is what every session says, in chunks of "
        f"{result['settings'].get('chunk_ms', 20):g} ms in real time",
        f"model: {model.get('name', '?')} ({model.get('source', '?')}) on {model.get('backend', '?')}, "
        f"{_ran(result['runtime'])}"
        + (" (random weights: the speed of the real network; they move pixels, they do not lip-sync)"
           if model.get("is_random") else ""),
        f"server: --min-session-fps {options.get('min_session_fps')}, --max-sessions "
        f"{options.get('max_sessions')}, --max-batch {options.get('max_batch')}; run took "
        f"{result['duration_seconds']:.0f} s",
    ]
    refused = next((p for p in result["points"] if p["refusal"]), None)
    if refused is not None:
        lines.append(f"first refusal (at {refused['sessions']} sessions): {refused['refusal']}")
    d = result.get("drift")
    if d is not None:
        lines.append(
            f"drift over {d['seconds']:g} s: {d['drift_frames']} frames (sent {d['frames_sent']} + dropped "
            f"{d['frames_dropped']} - expected {d['frames_expected']}); median lag "
            f"{_ms(d['lag_ms_first_10pct']['median'], 0)} ms in the first 10 %, "
            f"{_ms(d['lag_ms_last_10pct']['median'], 0)} ms in the last 10 %"
        )
    return lines + [f"note: {n}" for n in result["notes"]]


def soak_tables(result: dict[str, Any]) -> list[Table]:
    """The ``--soak`` report's tables: the goal, requests by client, errors by code, the unexpected ones,
    the server's RSS, frame-request latency."""
    out: list[Table] = []
    g = result["goal"]
    growth = g["rss_growth_pct"]
    out.append(
        Table(
            f"Goal: {g['line']}",
            ["figure", "measured", "goal", "met"],
            [
                ["unexpected errors", str(g["unexpected_errors"]), "0", _yes(g["unexpected_errors"] == 0)],
                ["timeouts", str(g["timeouts"]), "0", _yes(g["timeouts"] == 0)],
                ["server crashes", str(g["crashes"]), "0", _yes(g["crashes"] == 0)],
                [
                    "RSS growth after warm-up",
                    "–" if growth is None else f"{growth:+.2f} %",
                    f"< {g['rss_growth_limit_pct']:g} %",
                    "–" if growth is None else _yes(growth < g["rss_growth_limit_pct"]),
                ],
            ],
        )
    )
    kinds = result["requests"]["by_kind"]
    slots: dict[str, int] = {}
    for client in result["clients"]:
        slots[client["kind"]] = slots.get(client["kind"], 0) + 1
    rows = [
        [kind, str(slots.get(kind, 0)), str(c["ok"]), str(c["expected_error"]), str(c["unexpected_error"]),
         str(c["timeout"])]
        for kind, c in kinds.items()
    ]
    total = result["requests"]["by_outcome"]
    rows.append(["all", str(len(result["clients"])), str(total["ok"]), str(total["expected_error"]),
                 str(total["unexpected_error"]), str(total["timeout"])])
    out.append(
        Table(
            "Requests by client and outcome (expected: provoked by the request, or a refusal under load)",
            ["client", "clients", "ok", "expected error", "unexpected error", "timeout"],
            rows,
        )
    )
    out.append(
        Table(
            "Errors by code",
            ["code", "expected", "unexpected"],
            [[code, str(c["expected"]), str(c["unexpected"])]
             for code, c in result["errors_by_code"].items()],
        )
    )
    unexpected = result["unexpected_errors"]
    if unexpected["listed"]:
        shown = len(unexpected["listed"])
        out.append(
            Table(
                f"Unexpected errors and timeouts (the first {shown}; {unexpected['total']} unexpected errors "
                "in all)",
                ["at s", "client", "request", "code", "detail"],
                [[f"{u['at_seconds']:.1f}", u["client"], u["request"], u["code"], u["detail"]]
                 for u in unexpected["listed"]],
            )
        )
    rss = result["rss"]

    def mb(value: Any) -> str:
        return "–" if value is None else f"{float(value):.1f}"

    header = ["start", "after warm-up"] + [f"minute {m['minute']}" for m in rss["per_minute"]]
    header += ["end of load", "idle after", "peak", "growth after warm-up"]
    row = [mb(rss["start_mb"]), mb(rss["after_warmup_mb"])] + [mb(m["rss_mb"]) for m in rss["per_minute"]]
    row += [mb(rss["end_mb"]), mb(rss["idle_end_mb"]), mb(rss["peak_mb"]),
            "–" if rss["growth_pct"] is None else f"{rss['growth_pct']:+.2f} %"]
    out.append(Table("Server RSS (MB)", header, [row]))
    latency = result["frame_latency_ms"]
    out.append(
        Table(
            "Frame requests that succeeded: latency (ms)",
            ["transport", "requests", "p50", "p99", "max"],
            [[name, str(lat["count"]), _ms(lat["p50"], 1), _ms(lat["p99"], 1), _ms(lat["max"], 1)]
             for name, lat in (("POST /v1/frame", latency["http"]), ("/v1/stream", latency["stream"]))],
        )
    )
    return out


def _yes(met: bool) -> str:
    return "yes" if met else "NO"


def soak_summary_lines(result: dict[str, Any]) -> list[str]:
    """The lines above the ``--soak`` tables: machine, load, input, model, the run, sessions, the goal."""
    i, machine, model = result["input"], result["machine"], result.get("model", {})
    run, sessions, server = result["run"], result["sessions"], result["server"]
    source = "sample talking head" if i["sample"] else (i["video"] or i["package"])
    kinds = ", ".join(f"{n} {k}" for k, n in _count(c["kind"] for c in result["clients"]).items())
    lines = [
        f"machine: {hardware_line(machine)}",
        f"load average before / after: {machine['load_average']} / {result['load_average_after']}",
        f"input: {source}, {i['width']}x{i['height']} at {i['fps']:g} fps ({i['family']}), "
        f"{i['n_frames']} frames, {i['speech_seconds']:.1f} s of speech",
        f"model: {model.get('name', '?')} ({model.get('source', '?')}) on {model.get('backend', '?')}"
        + (" (random weights: the speed of the real network; they move pixels, they do not lip-sync)"
           if model.get("is_random") else ""),
        f"soak: {len(result['clients'])} clients ({kinds}) for {run['ran_seconds']:.0f} of "
        f"{run['seconds']:g} s ({run['warmup_seconds']:g} s of warm-up)"
        f"{', stopped early' if run['stopped_early'] else ''}; "
        f"{result['requests']['total']} requests; run took {result['duration_seconds']:.0f} s",
        f"live sessions: {sessions['started']} started, {sessions['completed']} ended by the server's "
        f"session_end, {sessions['frames_received']} frames received; the server dropped "
        f"{_dropped(sessions['frames_dropped'], sessions['frames_expected'])} frames of those it ended",
        f"server: --min-session-fps {server['options'].get('min_session_fps')}, after the soak "
        f"{server['sessions_after'].get('sessions', '?')} session(s) running, server-side errors by code "
        f"{server['metrics_after'].get('errors_by_code', {}) or '{}'}",
        f"goal ({result['goal']['line']}): {'met' if result['goal']['met'] else 'NOT met'}",
    ]
    return lines + [f"note: {n}" for n in result["notes"]]


def scaleout_tables(result: dict[str, Any]) -> list[Table]:
    """The ``--ray`` report's tables: latency per target and the hop's overhead, each avatar's replicas, the
    cluster at the end."""
    targets, overhead = result["targets"], result["overhead"]

    def stats(s: dict[str, Any]) -> list[str]:
        return [_ms(s["median"]), _ms(s["p90"]), _ms(s["p99"]), _ms(s["max"])]

    rows = [
        [name, f"{t['ok']} / {t['requests']}", *stats(t["latency_ms"]), _ms(t["server_ms"]["median"]),
         _ms(t["outside_server_ms"]["median"])]
        for name, t in targets.items()
    ]
    rows.append(["ray - plain", "", _ms(overhead["median_ms"]), _ms(overhead["p90_ms"]),
                 _ms(overhead["p99_ms"]), "", "", _ms(overhead["outside_server_median_ms"])])
    rows.append(["ray / plain", "", _x(overhead["ratio"]), "", "", "", "", ""])
    out = [
        Table(
            "Frame latency, the plain server against the Ray cluster (ms; POST /v1/frame, one at a time, "
            "interleaved)",
            ["target", "served / sent", "median", "p90", "p99", "max", "frame server median",
             "outside the frame server median"],
            rows,
        )
    ]
    rows = [
        [a["id"], f"{a['plain']['ok']} / {a['plain']['requests']}",
         f"{a['ray']['ok']} / {a['ray']['requests']}",
         ", ".join(f"{r} ({n})" for r, n in a["replicas"].items()) or "–",
         "–" if a["affinity"] is None else f"{a['affinity']:.2f}", ", ".join(a["held_by_at_end"]) or "–",
         _ms(a["plain"]["latency_ms"]["median"]), _ms(a["ray"]["latency_ms"]["median"])]
        for a in result["avatars"]
    ]
    out.append(
        Table(
            "Affinity: the replicas that served each avatar (affinity = the share of its most frequent one)",
            ["avatar", "plain served / sent", "ray served / sent", "replicas (requests)", "affinity",
             "held at the end by", "plain median ms", "ray median ms"],
            rows,
        )
    )
    cluster = result["cluster"]
    out.append(
        Table(
            f"The cluster at the end (GET /v1/cluster; at most {cluster['max_packages_per_replica']} avatars "
            "per replica)",
            ["replica", "pid", "holding"],
            [[r["replica"], str(r["pid"]), ", ".join(r["holding"]) or "–"] for r in cluster["replicas"]],
        )
    )
    errors = result["errors"]
    if errors["listed"]:
        out.append(
            Table(
                f"Failed requests (the first {len(errors['listed'])} of {errors['total']})",
                ["target", "avatar", "round", "status", "detail"],
                [[e["target"], e["avatar"], str(e["round"]), "–" if e["status"] is None else str(e["status"]),
                  e["detail"]] for e in errors["listed"]],
            )
        )
    return out


def scaleout_summary_lines(result: dict[str, Any]) -> list[str]:
    """The lines above the ``--ray`` tables: machine, load, catalog, cluster, models, the headline, notes."""
    machine, ray, settings = result["machine"], result["ray"], result["settings"]
    overhead, affinity = result["overhead"], result["affinity"]
    models = ", ".join(
        f"{m['name']} ({m['source']}) on {m['backend']}, {m['precision']} on {m['device']}"
        for m in result["models"]
    )
    ratio = "–" if overhead["ratio"] is None else f"{overhead['ratio']:.2f}x"
    share = "–" if affinity["min"] is None else f"{affinity['min']:.2f}"
    return [
        f"machine: {hardware_line(machine)}",
        f"load average before / after: {machine['load_average']} / {result['load_average_after']}",
        f"catalog: {result['catalog']['path']} ({result['catalog']['entries']} avatars; measured "
        f"{', '.join(a['id'] for a in result['avatars'])}), {settings['requests_per_avatar']} requests per "
        f"avatar to each target after {settings['warmup']} of warm-up",
        f"ray {ray['version']}: {ray['cluster']} cluster of {ray['cluster_cpus']:g} CPUs, {ray['replicas']} "
        f"replicas of {ray['replica_cpus']:g} CPU holding at most {ray['max_packages_per_replica']} avatars "
        "each",
        f"models: {models or '–'}; run took {result['duration_seconds']:.0f} s",
        f"the extra hop: {_ms(overhead['median_ms'])} ms at the median ({ratio} the plain server's); "
        f"affinity {share} at the lowest, {affinity['on_one_replica']} of {affinity['avatars']} avatars on "
        f"one replica, {affinity['replicas_used']} replicas used",
        *[f"note: {n}" for n in result["notes"]],
    ]


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def to_markdown(result: dict[str, Any]) -> str:
    """The report as Markdown (``--markdown OUT``)."""
    lines = [f"- {line}" for line in summary_lines(result)]
    for table in tables(result):
        lines += [
            "",
            f"**{table.title}**",
            "",
            "| " + " | ".join(table.header) + " |",
            "|" + "|".join("---" for _ in table.header) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def print_report(result: dict[str, Any], console: Any) -> None:
    """The report as Rich tables on ``console`` (a :class:`rich.console.Console`)."""
    from rich.table import Table as RichTable

    for line in summary_lines(result):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    for table in tables(result):
        rich_table = RichTable(title=table.title, title_justify="left")
        for i, name in enumerate(table.header):
            rich_table.add_column(name, justify="left" if i == 0 else "right")
        for row in table.rows:
            rich_table.add_row(*row)
        console.print(rich_table)
