"""The bench's JSON Schema files (``lipsync_tools/bench/schemas/``): valid draft 2020-12 schemas in step with
the version constants, as strict as the checker they replaced, usable by a plain validator as
docs/benchmarks.md tells a CI job to use them, and ``check_result``'s messages naming where a document breaks
them."""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from typer.testing import CliRunner

import lipsync_tools.bench
from lipsync_tools.bench import SchemaError, check_result, load_schema, schema_path
from lipsync_tools.bench.report import (
    COMPARE_SCHEMA_VERSION,
    DOCUMENT_KINDS,
    LIVE_SCHEMA_VERSION,
    SCALEOUT_SCHEMA_VERSION,
    SCHEMA_DIR,
    SOAK_SCHEMA_VERSION,
)
from lipsync_tools.bench.runner import headline
from lipsync_tools.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("compare", "live", "soak", "scaleout")
SHARED_DEFS = ("machine", "load_average", "notes", "quality", "runtime", "goal")


def scaleout_like(machine: dict[str, Any]) -> dict[str, Any]:
    """A minimal ``--ray`` document: two avatars, one on each replica, one request of bert's failed."""

    def stats(median: float) -> dict[str, float]:
        return {"median": median, "p90": median + 5, "p99": median + 8, "max": median + 9}

    def target(url: str, ok: int, median: float, server: float) -> dict[str, Any]:
        return {"url": url, "requests": 10, "ok": ok, "errors": 10 - ok, "latency_ms": stats(median),
                "server_ms": stats(server), "outside_server_ms": stats(median - server)}

    def avatar(name: str, replica: str, ray_ok: int) -> dict[str, Any]:
        return {"id": name, "n_frames": 120, "width": 176, "height": 144,
                "plain": {"requests": 5, "ok": 5, "errors": 0, "latency_ms": stats(50.0)},
                "ray": {"requests": 5, "ok": ray_ok, "errors": 5 - ray_ok, "latency_ms": stats(65.0)},
                "replicas": {replica: ray_ok}, "replica": replica, "affinity": 1.0,
                "warmup_replicas": [replica] * 3, "held_by_at_end": [replica]}

    return {
        "schema_version": 1,
        "kind": "scale-out",
        "machine": machine,
        "load_average_after": [0.0],
        "settings": {"requests_per_avatar": 5, "warmup": 3, "model": "random"},
        "catalog": {"path": "catalog.json", "entries": 3},
        "ray": {"cluster": "local", "serve": "started", "cluster_cpus": 2.0, "replicas": 2,
                "max_packages_per_replica": 2, "replica_cpus": 0.5, "ingress_cpus": 0.1, "version": "2.60.0"},
        "models": [{"name": "random", "source": "seed 0", "backend": "onnx", "family": "wav2lip",
                    "precision": "fp32", "device": "cpu", "is_random": True, "packages": ["anna", "bert"]}],
        "targets": {"plain": target("http://127.0.0.1:1", 10, 50.0, 48.0),
                    "ray": target("http://127.0.0.1:2", 9, 65.0, 47.0)},
        "overhead": {"median_ms": 15.0, "ratio": 1.3, "p90_ms": 15.0, "p99_ms": 15.0,
                     "outside_server_median_ms": 16.0},
        "affinity": {"min": 1.0, "avatars": 2, "on_one_replica": 2, "replicas_used": 2},
        "avatars": [avatar("anna", "r1", 5), avatar("bert", "r2", 4)],
        "cluster": {"replicas": [{"replica": "r1", "pid": 11, "holding": ["anna"]},
                                 {"replica": "r2", "pid": 12, "holding": ["bert"]}],
                    "max_packages_per_replica": 2},
        "errors": {"total": 1, "listed": [{"target": "ray", "avatar": "bert", "round": 2, "status": 503,
                                           "detail": "HTTP 503, overloaded: retry"}]},
        "notes": ["random weights: they do not lip-sync"],
        "duration_seconds": 30.0,
    }


@pytest.fixture
def documents(result_like: dict[str, Any], live_like: dict[str, Any], soak_like: dict[str, Any]
              ) -> dict[str, dict[str, Any]]:
    """A small document of each kind, as JSON gives it back (conftest's, the --compare one with the headline
    the bench computes from it, and this module's --ray one)."""
    compare = copy.deepcopy(result_like)
    compare["headline"] = headline(compare)
    scaleout = scaleout_like(copy.deepcopy(soak_like["machine"]))
    return {name: json.loads(json.dumps(doc))
            for name, doc in (("compare", compare), ("live", live_like), ("soak", soak_like),
                              ("scaleout", scaleout))}


def _object_schemas(node: Any, where: str = "#") -> list[tuple[str, dict[str, Any]]]:
    """Every subschema with ``properties`` in ``node``, with its JSON pointer."""
    found = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((where, node))
        for key, value in node.items():
            found += _object_schemas(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _object_schemas(value, f"{where}/{i}")
    return found


# --- the files --------------------------------------------------------------------------------------------


def test_the_schema_folder_holds_one_file_per_document_kind():
    assert SCHEMA_DIR == ROOT / "lipsync_tools" / "bench" / "schemas"
    assert sorted(p.name for p in SCHEMA_DIR.iterdir()) == sorted(f"{n}.schema.json" for n in NAMES)
    assert [spec.name for spec in DOCUMENT_KINDS.values()] == list(NAMES)
    for name in NAMES:
        assert schema_path(name) == SCHEMA_DIR / f"{name}.schema.json" and schema_path(name).is_file()
    with pytest.raises(SchemaError, match=r"no bench result schema is named 'marathon'; expected one of "
                                          r"compare, live, soak, scaleout$"):
        schema_path("marathon")


@pytest.mark.parametrize("name", NAMES)
def test_every_file_is_a_valid_draft_2020_12_schema(name: str):
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert jsonschema.validators.validator_for(schema) is Draft202012Validator
    assert load_schema(name) is not schema  # a new dict each call: a caller's edit changes no one else's


def test_a_broken_schema_is_refused_by_check_schema():
    """The check above can fail: a misspelt type is not a schema."""
    broken = load_schema("soak")
    broken["properties"]["duration_seconds"] = {"type": "float"}
    with pytest.raises(jsonschema.exceptions.SchemaError):
        Draft202012Validator.check_schema(broken)


@pytest.mark.parametrize(
    ("name", "kind", "version"),
    [("compare", None, COMPARE_SCHEMA_VERSION), ("live", "live", LIVE_SCHEMA_VERSION),
     ("soak", "soak", SOAK_SCHEMA_VERSION), ("scaleout", "scale-out", SCALEOUT_SCHEMA_VERSION)],
)
def test_each_files_version_and_kind_are_the_constants_in_code(name: str, kind: str | None, version: int):
    schema = load_schema(name)
    assert schema["properties"]["schema_version"] == {"const": version}
    assert DOCUMENT_KINDS[kind].version == version and DOCUMENT_KINDS[kind].name == name
    if kind is None:
        assert "kind" not in schema["properties"]  # a --compare document carries none
    else:
        assert schema["properties"]["kind"] == {"const": kind}


@pytest.mark.parametrize("name", NAMES)
def test_every_listed_key_is_required_and_no_other_allowed(name: str):
    """The checker the files replaced required every key it listed; the files also refuse unlisted keys,
    except in the objects whose content is free (``"type": "object"`` without ``properties``)."""
    objects = _object_schemas(load_schema(name))
    assert len(objects) > 10
    for pointer, node in objects:
        assert node["required"] == list(node["properties"]), pointer
        assert node["additionalProperties"] is False, pointer


def test_shared_definitions_are_the_same_in_every_file():
    """Each file stands alone (any validator reads it without resolving other files), so the parts every
    document shares are written in each: they must not drift apart."""
    schemas = {name: load_schema(name) for name in NAMES}
    for key in SHARED_DEFS:
        owners = [name for name in NAMES if key in schemas[name]["$defs"]]
        assert len(owners) >= 2, key
        assert all(schemas[n]["$defs"][key] == schemas[owners[0]]["$defs"][key] for n in owners), key
    compare_input = schemas["compare"]["$defs"]["input"]
    for name in ("live", "soak"):
        speech = copy.deepcopy(schemas[name]["$defs"]["input"])
        assert speech["required"].pop() == "speech_seconds"
        assert speech["properties"].pop("speech_seconds") == {
            "description": "Seconds of speech in the package, looped by the clients.", "type": "number"
        }
        assert speech["properties"] == compare_input["properties"]
        assert speech["required"] == compare_input["required"]
    assert schemas["live"]["$defs"]["input"] == schemas["soak"]["$defs"]["input"]


# --- documents --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_each_kind_of_document_validates_with_a_plain_validator_and_with_check_result(
    name: str, documents: dict[str, dict[str, Any]]
):
    document = documents[name]
    jsonschema.validate(document, load_schema(name))  # what a CI job runs: no lipsync-tools code involved
    check_result(document)
    check_result(document, load_schema(name))


@pytest.mark.parametrize(
    ("option", "name"),
    [("--compare", "compare"), ("--live", "live"), ("--soak", "soak"), ("--ray", "scaleout")],
)
def test_the_files_the_cli_writes_validate(
    option: str, name: str, documents: dict[str, dict[str, Any]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    document = documents[name]
    for entry in ("run_compare", "run_live", "run_soak", "run_scaleout"):
        monkeypatch.setattr(lipsync_tools.bench, entry, lambda *_, **__: document)
    out = tmp_path / "result.json"
    extra = {"--soak": ["60"], "--ray": ["--catalog", str(tmp_path / "catalog.json")]}.get(option, [])
    if option == "--ray":
        pytest.importorskip("ray", reason="no ray extra here: pip install 'lipsync-tools[ray]'")
    args = ["bench", option, *extra, "--json", str(out)]
    cli = CliRunner().invoke(app, args)
    assert cli.exit_code == 0, cli.output
    written = json.loads(out.read_text())
    Draft202012Validator(load_schema(name)).validate(written)
    check_result(written)


def test_the_ci_command_in_the_docs_validates_a_result_and_refuses_a_broken_one(
    documents: dict[str, dict[str, Any]], tmp_path: Path
):
    """docs/benchmarks.md's ``python -c`` line, run as written (from the repository root) with this Python."""
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    [line] = [x for x in docs.splitlines() if x.startswith("python -c 'import json, sys, jsonschema")]
    command = shlex.split(line)
    assert command[-2:] == ["live.json", "lipsync_tools/bench/schemas/live.schema.json"]
    good = tmp_path / "live.json"
    good.write_text(json.dumps(documents["live"]))
    run = [sys.executable, *command[1:-2], str(good), command[-1]]
    done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    broken = copy.deepcopy(documents["live"])
    broken["points"][0]["per_session"][0]["held"] = "yes"
    good.write_text(json.dumps(broken))
    done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "'yes' is not of type 'boolean'" in done.stderr


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        node: Any = document
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        node: Any = document
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


# (kind, change, check_result's message, the path a plain validator names)
BREAKS: list[tuple[str, Callable[[dict[str, Any]], None], str, list[Any]]] = [
    ("compare", _set(["input", "width"], "176"), "result.input.width is str, expected int",
     ["input", "width"]),
    ("compare", _delete(["modes", "preloaded", "startup", "warmup_s"]),
     "result.modes.preloaded.startup lacks warmup_s", ["modes", "preloaded", "startup"]),
    ("compare", _set(["headline", "goals", "realtime"], {}),
     "result.headline.goals has unexpected key(s) 'realtime'; its schema allows only crop_only_over_model, "
     "hd_jpeg_over_model, four_clients_over_ceiling, int8_over_fp32, int8_psnr_db", ["headline", "goals"]),
    ("compare", _set(["precision", "rows", 2, "over_fp32"], "1.0"),
     "result.precision.rows[2].over_fp32 is str, expected int or float or null",
     ["precision", "rows", 2, "over_fp32"]),
    ("compare", _set(["headline", "goals", "int8_psnr_db", "comparison"], "<"),
     "result.headline.goals.int8_psnr_db.comparison is '<', expected one of '<=', '>='",
     ["headline", "goals", "int8_psnr_db", "comparison"]),
    ("compare", _set(["modes", "preloaded", "runtime", "quality"], {"psnr_db": None}),
     "result.modes.preloaded.runtime.quality lacks identical, frames, threshold_db, passed",
     ["modes", "preloaded", "runtime", "quality"]),
    ("live", _set(["points", 0, "per_session", 0, "lag_ms", "p99"], "220"),
     "result.points[0].per_session[0].lag_ms.p99 is str, expected int or float or null",
     ["points", 0, "per_session", 0, "lag_ms", "p99"]),
    ("live", _delete(["runtime", "quality"]), "result.runtime lacks quality", ["runtime"]),
    ("live", _set(["tail_ms"], 3.0),
     "result has unexpected key(s) 'tail_ms'; its schema allows only schema_version, kind, machine", []),
    ("live", _set(["drift"], []), "result.drift is list, expected an object or null", ["drift"]),
    ("live", _set(["machine", "libraries", "torch"], 2),
     "result.machine.libraries.torch is int, expected str", ["machine", "libraries", "torch"]),
    ("soak", _set(["clients", 3, "slot"], None), "result.clients[3].slot is null, expected int",
     ["clients", 3, "slot"]),
    ("soak", _delete(["frame_latency_ms", "stream", "p99"]), "result.frame_latency_ms.stream lacks p99",
     ["frame_latency_ms", "stream"]),
    ("soak", _set(["server", "log", "last_error"], ""),
     "result.server.log has unexpected key(s) 'last_error'; its schema allows only error_lines, tracebacks, "
     "warning_lines, first_errors, path", ["server", "log"]),
    ("soak", _set(["errors_by_code", "internal", "expected"], False),
     "result.errors_by_code.internal.expected is a bool, expected int",
     ["errors_by_code", "internal", "expected"]),
    ("soak", _set(["notes"], ["fine", 3]), "result.notes[1] is int, expected str", ["notes", 1]),
    ("scaleout", _set(["avatars", 1, "replicas", "r2"], "4"),
     "result.avatars[1].replicas.r2 is str, expected int", ["avatars", 1, "replicas", "r2"]),
    ("scaleout", _delete(["overhead", "ratio"]), "result.overhead lacks ratio", ["overhead"]),
    ("scaleout", _set(["ray", "cluster"], "remote"),
     "result.ray.cluster is 'remote', expected one of 'local', 'reused'", ["ray", "cluster"]),
    ("scaleout", _set(["targets", "ray", "latency_ms", "p999"], 1.0),
     "result.targets.ray.latency_ms has unexpected key(s) 'p999'; its schema allows only median, p90, p99, "
     "max",
     ["targets", "ray", "latency_ms"]),
]


@pytest.mark.parametrize(("name", "change", "message", "path"), BREAKS,
                         ids=[f"{b[0]}-{'.'.join(map(str, b[3])) or 'root'}" for b in BREAKS])
def test_a_wrong_type_a_missing_key_or_an_extra_key_is_refused_naming_the_place(
    name: str, change: Callable[[dict[str, Any]], None], message: str, path: list[Any],
    documents: dict[str, dict[str, Any]],
):
    document = copy.deepcopy(documents[name])
    change(document)
    with pytest.raises(SchemaError) as caught:
        check_result(document)
    assert str(caught.value).startswith(message)
    error = best_match(Draft202012Validator(load_schema(name)).iter_errors(document))
    assert error is not None and list(error.absolute_path) == path  # the file refuses it, not only our code


def test_the_first_place_is_the_shallowest_and_the_same_each_time(documents: dict[str, dict[str, Any]]):
    document = copy.deepcopy(documents["soak"])
    document["crashes"] = [{"at_seconds": 1.0, "exit_code": "-9", "stderr_tail": ""}]
    del document["rss"]["end_mb"], document["rss"]["peak_mb"]
    document["rss"]["samples"] = None
    messages = set()
    for _ in range(3):
        with pytest.raises(SchemaError) as caught:
            check_result(document)
        messages.add(str(caught.value))
    assert messages == {"result.rss lacks end_mb, peak_mb"}


@pytest.mark.parametrize(
    ("value", "found"),
    [(3.0, "float"), (True, "a bool"), (np.int64(3), "int64"), ("3", "str")],
)
def test_integers_are_python_ints_and_numbers_ints_or_floats(
    value: Any, found: str, documents: dict[str, dict[str, Any]]
):
    """As strict as the checker the files replaced: JSON Schema's integer admits 3.0, and jsonschema's number
    NumPy integers; neither is what the bench must write."""
    document = copy.deepcopy(documents["live"])
    document["points"][0]["frames_expected"] = value
    where = r"^result\.points\[0\]\.frames_expected"
    with pytest.raises(SchemaError, match=where + rf" is {found}, expected int$"):
        check_result(document)
    document = copy.deepcopy(documents["live"])
    document["server"]["ready_rss_mb"] = value
    if isinstance(value, float):
        check_result(document)  # a float is a number
    else:
        with pytest.raises(SchemaError, match=rf"ready_rss_mb is {found}, expected int or float$"):
            check_result(document)
    document["server"]["ready_rss_mb"] = np.float64(1.5)  # a float subclass: json.dumps writes it as one
    check_result(document)


@pytest.mark.parametrize(("name", "option", "version"), [("compare", "--compare", COMPARE_SCHEMA_VERSION),
                                                          ("live", "--live", LIVE_SCHEMA_VERSION),
                                                          ("soak", "--soak", SOAK_SCHEMA_VERSION),
                                                          ("scaleout", "--ray", SCALEOUT_SCHEMA_VERSION)])
def test_a_document_of_another_version_is_refused_by_its_version(
    name: str, option: str, version: int, documents: dict[str, dict[str, Any]]
):
    for other in (version - 1, version + 1, str(version), None):
        document = copy.deepcopy(documents[name])
        document["schema_version"] = other
        expected = (f"result.schema_version is {other!r}: a {option} document of another version; this "
                    f"lipsync-tools reads version {version} (run the benchmark again with it)")
        with pytest.raises(SchemaError) as caught:
            check_result(document)
        assert str(caught.value) == expected
        # the file alone refuses it too, and so does check_result given the schema explicitly
        assert not Draft202012Validator(load_schema(name)).is_valid(document)
        with pytest.raises(SchemaError, match=rf"^result\.schema_version is {other!r}, expected {version}$"):
            check_result(document, load_schema(name))


def test_the_kind_picks_the_file_and_an_unknown_kind_is_refused(documents: dict[str, dict[str, Any]]):
    live = copy.deepcopy(documents["live"])
    live["kind"] = "soak"  # a live document read as a soak one: version 2 is not the soak's 1
    with pytest.raises(SchemaError, match=r"a --soak document of another version"):
        check_result(live)
    for kind in ("compare", ["live"], 3):
        document = copy.deepcopy(documents["compare"])
        document["kind"] = kind
        expected = r"^result\.kind is .*; expected live, soak, scale-out or none \(--"
        with pytest.raises(SchemaError, match=expected):
            check_result(document)
    with pytest.raises(SchemaError, match=r"^run\.schema_version is None: a --compare document"):
        check_result([documents["compare"]], where="run")
