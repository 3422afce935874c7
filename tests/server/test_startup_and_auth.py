"""Readiness while loading, failed startups, the bearer token, and ``lipsync serve`` as a real process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from lipsync_tools.client import LipsyncClient
from lipsync_tools.errors import InputNotFoundError, ProtocolError, UsageError
from lipsync_tools.protocol import CODECS, AudioFormat, ErrorReply, FrameRequest
from lipsync_tools.server import Components, LipsyncServer, PackageSpec, ServerConfig, engine_components
from lipsync_tools.server.config import ServerConfig as Config
from tests.server.servers import PACKAGE_ID, running_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def identity_config(package: Path, **overrides: Any) -> ServerConfig:
    """The identity model on torch: loads in a fraction of a second (no export, no weights)."""
    base = Config(packages=(PackageSpec(id=PACKAGE_ID, path=package),), port=0, model="identity",
                  backend="torch", warmup_frames=1)
    return replace(base, **overrides)


def test_readyz_is_503_until_packages_and_model_are_loaded(avatar_package: Path) -> None:
    gate = threading.Event()
    real = engine_components()

    def slow_load_model(config: ServerConfig, store: Any) -> Any:
        assert gate.wait(30), "the test never opened the gate"
        return real.load_model(config, store)

    components = replace(real, load_model=slow_load_model)
    with running_server(identity_config(avatar_package), components, ready_timeout=None) as server:
        with LipsyncClient(server.url) as client:
            assert client.health()
            assert not client.ready(wait_seconds=0.3)
            r = httpx.get(f"{server.url}/readyz")
            assert (r.status_code, r.json()) == (503, {"ready": False, "reason": "loading"})
            with pytest.raises(ProtocolError) as early:
                client.frame(FrameRequest(request_id=1, package_id=PACKAGE_ID, frame_index=0,
                                          audio=AudioFormat.REPLAY))
            assert early.value.code == "overloaded"
            gate.set()
            assert client.ready(wait_seconds=60)
            assert client.frame(FrameRequest(request_id=2, package_id=PACKAGE_ID, frame_index=0,
                                             audio=AudioFormat.REPLAY)).frame_index == 0
        report = server.state.startup_report
        assert report is not None
        assert {"model_load", "frame_preload", "feature_mapping", "warmup", "total"} <= set(report.seconds)
        assert report.rss_bytes > 0 and report.packages[0]["id"] == PACKAGE_ID


def test_a_failed_startup_is_reported_and_stops_the_server(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sanders"
    junk.write_bytes(b"this is not a package")
    server = LipsyncServer(identity_config(junk))
    with pytest.raises(Exception, match=r"junk\.sanders"):
        server.start_in_thread(ready_timeout=60)
    server.stop(join_timeout=15)
    assert server.state.startup_error is not None


def test_config_is_checked_before_anything_loads(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="does not exist"):
        LipsyncServer(Config(packages=(PackageSpec(id="a", path=tmp_path / "missing.sanders"),)))
    pkg = tmp_path / "a.sanders"
    pkg.write_bytes(b"")
    with pytest.raises(UsageError, match="given twice"):
        Config(packages=(PackageSpec(id="a", path=pkg), PackageSpec(id="a", path=pkg))).check()
    alice = Path("avatars/alice.sanders")
    assert PackageSpec.parse(str(alice)) == PackageSpec(id="alice", path=alice)
    assert PackageSpec.parse("bob=x/y.sanders") == PackageSpec(id="bob", path=Path("x/y.sanders"))
    with pytest.raises(UsageError, match="ID=PATH"):
        PackageSpec.parse("avatars/.hidden.sanders")


def test_bearer_token_guards_every_endpoint_but_healthz(avatar_package: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.sanders"
    outside.write_bytes(avatar_package.read_bytes())
    config = identity_config(avatar_package, token="s3cret", package_dir=avatar_package.parent)
    with running_server(config) as server:
        url = server.url
        assert httpx.get(f"{url}/healthz").status_code == 200
        for method, path in (("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/packages"),
                             ("POST", "/v1/frame"), ("DELETE", "/v1/packages/astro")):
            r = httpx.request(method, f"{url}{path}", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == "Bearer"
            error = CODECS["json"].decode(r.content)
            assert isinstance(error, ErrorReply) and error.code == "unauthorized"
            assert "'Authorization: Bearer <token>' with the server's --token" in error.message
            assert "bearer.<token>" in error.message  # the browser-side ways are named too
        with LipsyncClient(url) as anonymous, pytest.raises(ProtocolError) as denied:
            anonymous.packages()
        assert denied.value.code == "unauthorized"
        with LipsyncClient(url) as anonymous, anonymous.stream() as stream:
            reply = stream.recv(10)
            assert isinstance(reply, ErrorReply) and reply.code == "unauthorized"
            with pytest.raises(ConnectionClosed):
                stream.recv(10)
            assert stream.ws.close_code == 1008
        with LipsyncClient(url, token="s3cret") as client:
            assert client.ready()
            assert client.frame(FrameRequest(request_id=1, package_id=PACKAGE_ID, frame_index=1,
                                             audio=AudioFormat.REPLAY)).frame_index == 1
            with client.stream() as stream:
                assert stream.frame(FrameRequest(request_id=2, package_id=PACKAGE_ID, frame_index=2,
                                                 audio=AudioFormat.REPLAY)).request_id == 2
            with pytest.raises(ProtocolError) as forbidden:
                client.load_package("outside", str(outside))
            assert forbidden.value.code == "forbidden"
            escape = str(avatar_package.parent / ".." / outside.parent.name / outside.name)
            with pytest.raises(ProtocolError) as dotdot:
                client.load_package("outside", escape)
            assert dotdot.value.code == "forbidden"
            assert 'lipsync_errors_total{code="unauthorized"} 7' in client.metrics()
        # Browsers cannot set a header on a WebSocket: the token also works as a subprotocol or a query
        # parameter, and the server echoes only the plain "lipsync" subprotocol, never the token.
        ws_url = url.replace("http://", "ws://") + "/v1/stream"
        request = CODECS["binary"].encode(FrameRequest(request_id=3, package_id=PACKAGE_ID, frame_index=0,
                                                       audio=AudioFormat.REPLAY))
        for target, subprotocols in ((ws_url, ["lipsync", "bearer.s3cret"]), (ws_url + "?token=s3cret", None),
                                     (ws_url + "?token=wrong", ["lipsync"]), (ws_url, ["bearer.wrong"])):
            with ws_connect(target, subprotocols=subprotocols, open_timeout=10) as ws:  # type: ignore[arg-type]
                assert ws.subprotocol == ("lipsync" if subprotocols and "lipsync" in subprotocols else None)
                if "wrong" in target or "bearer.wrong" in (subprotocols or []):
                    denied_reply = CODECS["json"].decode(ws.recv(10))
                    assert isinstance(denied_reply, ErrorReply) and denied_reply.code == "unauthorized"
                else:
                    ws.send(request)
                    assert CODECS["binary"].decode(ws.recv(10)).request_id == 3
        assert httpx.get(f"{url}/demo").status_code != 401  # the page itself is public


def test_lipsync_serve_runs_as_a_process(avatar_package: Path) -> None:
    env = {**os.environ, "LIPSYNC_TOKEN": "from-env"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lipsync_tools", "serve", f"{PACKAGE_ID}={avatar_package}", "--port", "0",
         "--model", "identity", "--backend", "torch", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        event = json.loads(proc.stdout.readline())  # one JSON line when ready
        assert event["event"] == "ready"
        assert event["url"].startswith("http://127.0.0.1:")
        assert set(event["seconds"]) >= {"model_load", "frame_preload", "feature_mapping", "total"}
        assert event["model"]["name"] == "identity" and event["rss_bytes"] > 0
        batching = event["batching"]  # no --max-batch / --max-wait-ms: both chosen from the measured curve
        assert (batching["max_batch_source"], batching["max_wait_source"]) == ("measured", "measured")
        assert list(batching["batch_ms"]) == ["1", "2", "4", "8"]
        with LipsyncClient(event["url"], token="from-env") as client:
            assert client.ready() and [p["id"] for p in client.packages()] == [PACKAGE_ID]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status still says "terminated"
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err


def test_lipsync_serve_exits_with_the_error_code_of_a_bad_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lipsync_tools", "serve", str(tmp_path / "missing.sanders"), "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == InputNotFoundError.exit_code
    assert "missing.sanders does not exist" in result.stderr


def test_packages_with_different_checkpoints_are_served_by_their_own_models(
    astronaut_mp4: Path, onnx_cache: Path, tmp_path: Path
) -> None:
    """One server, many models: each package is served by its embedded checkpoint; packages embedding the
    same checkpoint share one loaded model; a package loaded at run time brings its own model."""
    import numpy as np
    import torch

    from lipsync_tools.models.checkpoint import random_wav2lip
    from lipsync_tools.pipeline.build import build_package
    from lipsync_tools.protocol.messages import AudioFormat, FrameRequest, ImageFormat

    checkpoints = []
    for seed in (1, 2):
        path = tmp_path / f"finetune-{seed}.pth"
        torch.save({"state_dict": random_wav2lip(seed=seed).state_dict()}, path)
        checkpoints.append(path)
    packages = {name: build_package(astronaut_mp4, tmp_path / f"{name}.sanders", checkpoint=ckpt).output
                for name, ckpt in (("a", checkpoints[0]), ("b", checkpoints[1]), ("c", checkpoints[0]))}

    specs = (PackageSpec(id="a", path=packages["a"]), PackageSpec(id="c", path=packages["c"]))
    config = ServerConfig(packages=specs, port=0, backend="onnx", onnx_cache_dir=onnx_cache,
                          package_dir=tmp_path)
    with running_server(config) as server, LipsyncClient(server.url) as client:
        models = server.state.engine.models.infos()  # type: ignore[union-attr]
        assert len(models) == 1 and models[0]["packages"] == ["a", "c"]  # one checkpoint, one model
        client.load_package("b", str(packages["b"]))

        def frame(package: str) -> np.ndarray:
            request = FrameRequest(request_id=1, package_id=package, frame_index=3,
                                   audio=AudioFormat.REPLAY, image=ImageFormat.RAW_BGR)
            return client.frame(request).image_array().astype(np.int16)

        a, b, c = frame("a"), frame("b"), frame("c")
        assert np.array_equal(a, c)  # same weights, same frame
        assert np.abs(a - b).max() > 0  # b answers with its own weights
        listed = {m["key"]: m["packages"] for m in client_models(server.url)}
        assert sorted(listed.values()) == [["a", "c"], ["b"]]


def client_models(url: str) -> list[dict[str, object]]:
    import httpx

    response = httpx.get(f"{url}/v1/models", timeout=10)
    assert response.status_code == 200
    return list(response.json()["models"])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("queue_limit", 200_000, "queue_limit is 200000; expected 1..100000"),  # was refused after loading
        ("queue_limit", 0, "queue_limit is 0"),
        ("max_batch", 0, "max_batch is 0"),
        ("max_wait_ms", -1.0, "max_wait_ms is -1.0"),
        ("jpeg_quality", 101, "jpeg_quality is 101"),
        ("silence_dbfs", 6.0, "silence_dbfs is 6.0"),
        ("blend", "soft", "blend is 'soft'"),
        ("max_models", 0, "max_models is 0"),
        ("model", "gpt", "model is 'gpt'"),
        ("backend", "tpu", "backend is 'tpu'"),
        ("seed", -1, "seed is -1"),
        ("warmup_frames", -1, "warmup_frames must be"),
        ("log_level", "loud", "log_level is 'loud'"),
        ("min_session_fps", 0.0, "min_session_fps must be"),
        ("max_connections", 0, "max_connections must be"),
        ("heap_trim_seconds", 0.5, "heap_trim_seconds must be 0 (off) or in [1, 86400]"),
    ],
)
def test_every_option_is_checked_by_one_rule_before_anything_loads(
    avatar_package: Path, option: str, value: object, message: str
) -> None:
    """ServerConfig.check applies the engine's and the model store's own rules (EngineOptions, ModelDefaults):
    a value the engine would refuse is refused before any model or package is loaded."""
    def never(*args: object) -> Any:
        raise AssertionError("a store or model was made for a config that cannot run")

    config = identity_config(avatar_package, **{option: value})
    with pytest.raises(UsageError, match=re.escape(message)):
        LipsyncServer(config, components=Components(make_store=never, load_model=never, make_engine=never))
    assert identity_config(avatar_package).engine_options().queue_limit == 64
