"""``lipsync serve --catalog``: packages loaded by their first request, one per id however many ask, URLs
pulled from a loopback HTTP server and verified, a catalog checkpoint kept outside its package, and one
clear error for every waiter when a load fails."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from lipsync_tools.client import LipsyncClient
from lipsync_tools.errors import ProtocolError, UsageError
from lipsync_tools.models.checkpoint import random_wav2lip
from lipsync_tools.pipeline.build import build_package
from lipsync_tools.protocol.messages import AudioFormat, FrameRequest, ImageFormat, Pacing
from lipsync_tools.server import ServerConfig
from tests.remote.http_server import Reply, loopback_server
from tests.server.servers import TEST_LIMITS, running_server, speech_like

pytestmark = pytest.mark.slow


def replay(package: str, frame: int = 3) -> FrameRequest:
    return FrameRequest(request_id=1, package_id=package, frame_index=frame, audio=AudioFormat.REPLAY,
                        image=ImageFormat.RAW_BGR)


@pytest.fixture(scope="module")
def avatars(astronaut_mp4: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("catalog")
    files: dict[str, Path] = {}
    for seed in (1, 2, 3):
        files[f"ckpt{seed}"] = folder / f"finetune-{seed}.pth"
        torch.save({"state_dict": random_wav2lip(seed=seed).state_dict()}, files[f"ckpt{seed}"])
    files["a"] = build_package(astronaut_mp4, folder / "a.sanders", checkpoint=files["ckpt1"]).output
    files["b"] = build_package(astronaut_mp4, folder / "b.sanders", checkpoint=files["ckpt2"]).output
    files["c"] = build_package(astronaut_mp4, folder / "c.sanders").output  # no checkpoint of its own
    return files


def test_catalog_ids_load_on_first_request(avatars: dict[str, Path], tmp_path: Path):
    body = avatars["b"].read_bytes()
    with loopback_server() as http:
        url = http.route("/b.sanders", Reply(body=body, delay_s=0.3))
        bad_url = http.route("/bad.sanders", Reply(body=body))
        catalog = avatars["c"].parent / "catalog.json"  # "c.sanders" is relative to the catalog's folder
        catalog.write_text(json.dumps({"packages": {
            "a": {"path": str(avatars["a"])},
            "b": {"url": url, "sha256": hashlib.sha256(body).hexdigest()},
            "c": {"path": "c.sanders", "checkpoint": {"path": str(avatars["ckpt3"])}},
            "bad": {"url": bad_url, "sha256": "0" * 64},
        }}))
        cache = tmp_path / "cache"
        config = ServerConfig(port=0, backend="onnx", onnx_cache_dir=tmp_path / "onnx", catalog=catalog,
                              cache_dir=cache, sessions=TEST_LIMITS, min_session_fps=1.0)
        with running_server(config) as server:
            with LipsyncClient(server.url) as client:
                assert client.packages() == []  # nothing is loaded before it is asked for
            # three clients ask for "b" at once: one download, one load, three answers
            replies: list[object] = []

            def ask(package: str) -> None:
                with LipsyncClient(server.url) as own:
                    try:
                        replies.append(own.frame(replay(package)))
                    except ProtocolError as exc:
                        replies.append(exc)

            threads = [threading.Thread(target=ask, args=("b",)) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert len(replies) == 3 and all(not isinstance(r, ProtocolError) for r in replies), replies
            assert [entry.path for entry in http.log].count("/b.sanders") == 1
            # a failed load answers every waiter with the same clear error, and leaves nothing behind
            replies.clear()
            threads = [threading.Thread(target=ask, args=("bad",)) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert len(replies) == 2
            assert all(isinstance(r, ProtocolError) and r.code == "bad_package" for r in replies)
            assert len({str(r) for r in replies}) == 1 and "sha256" in str(replies[0]).lower()
            assert sorted(p.name for p in cache.iterdir()) == [f"{hashlib.sha256(body).hexdigest()}.sanders"]
            with LipsyncClient(server.url) as client:
                # a session on a catalog id loads it too
                with client.session("a", pacing=Pacing.UNPACED, image=ImageFormat.RAW_BGR) as session:
                    frames = list(session.play(speech_like(0.4)))
                assert len(frames) == 10
                c = client.frame(replay("c")).image_array().astype(np.int16)
                a = client.frame(replay("a")).image_array().astype(np.int16)
                assert np.abs(a - c).max() > 0  # c is served with its catalog checkpoint, not a's
                with pytest.raises(ProtocolError) as unknown:
                    client.frame(replay("nobody"))
                assert unknown.value.code == "unknown_package"
            models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]
            assert sorted(m["packages"][0] for m in models) == ["a", "b", "c"]
            sha3 = hashlib.sha256(avatars["ckpt3"].read_bytes()).hexdigest()
            assert any(m["key"] == f"sha256:{sha3}" for m in models)
            metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
            assert "lipsync_catalog_loads_total 3" in metrics and "lipsync_models_loaded 3" in metrics
            assert 'lipsync_package_frames_total{package="c"} 1' in metrics
            assert f'lipsync_model_frames_total{{model="sha256:{sha3}"}} 1' in metrics


def test_memory_budget_evicts_idle_packages_never_held_ones_and_refuses_what_cannot_fit(
    avatars: dict[str, Path], tmp_path: Path
):
    """A budget that holds two avatars (decoded frames + Wav2Lip weights) serving three: the least recently
    used idle one makes room; one with a live session is never evicted; when every loaded one is held, the
    load is refused with a clear error and the server keeps serving."""
    import time

    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"packages": {
        "a": {"path": str(avatars["a"])},
        "b": {"path": str(avatars["b"])},
        "c": {"path": str(avatars["c"]), "checkpoint": {"path": str(avatars["ckpt3"])}},
    }}))
    per_avatar = 50 * 320 * 240 * 3 + 36_298_035 * 4  # frames + Wav2Lip weights
    config = ServerConfig(port=0, backend="onnx", onnx_cache_dir=tmp_path / "onnx", catalog=catalog,
                          max_memory=int(2.5 * per_avatar), sessions=TEST_LIMITS, min_session_fps=1.0)

    def loaded(url: str) -> list[str]:
        return sorted(p["id"] for p in httpx.get(f"{url}/v1/packages", timeout=10).json()["packages"])

    def held(url: str, package: str) -> None:
        for _ in range(100):
            listed = httpx.get(f"{url}/v1/packages", timeout=10).json()["packages"]
            if any(p["id"] == package and p["sessions"] == 1 for p in listed):
                return
            time.sleep(0.05)
        raise AssertionError(f"{package} is not held by its session")

    with running_server(config) as server, LipsyncClient(server.url) as client:
        client.frame(replay("a"))
        client.frame(replay("b"))
        assert loaded(server.url) == ["a", "b"]
        client.frame(replay("c"))  # a is the least recently used: it goes, with its model
        assert loaded(server.url) == ["b", "c"]
        with LipsyncClient(server.url) as other, other.session("b", pacing=Pacing.UNPACED):
            held(server.url, "b")
            client.frame(replay("a"))  # c goes, not b: b has a live session
            assert loaded(server.url) == ["a", "b"]
            with LipsyncClient(server.url) as third, third.session("a", pacing=Pacing.UNPACED):
                held(server.url, "a")
                with pytest.raises(ProtocolError, match="no room") as refused:
                    client.frame(replay("c"))
                assert refused.value.code == "bad_package"
                assert loaded(server.url) == ["a", "b"]
                client.frame(replay("b"))  # and the server keeps serving
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert "lipsync_package_evictions_total 2" in metrics
        budget = next(x for x in metrics.splitlines() if x.startswith("lipsync_memory_budget_bytes "))
        assert float(budget.split()[1]) == int(2.5 * per_avatar)


def test_crop_only_avatars_cost_megabytes_and_refuse_full_frames(avatars: dict[str, Path], tmp_path: Path):
    """``"frames": "none"`` (or ``--frames none``): no full frame is decoded; crop_only replies work."""
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"packages": {
        "lean": {"path": str(avatars["a"]), "frames": "none"},
        "full": {"path": str(avatars["a"])},
    }}))
    config = ServerConfig(port=0, backend="onnx", onnx_cache_dir=tmp_path / "onnx", catalog=catalog)
    with running_server(config) as server, LipsyncClient(server.url) as client:
        crop = FrameRequest(request_id=1, package_id="lean", frame_index=3, audio=AudioFormat.REPLAY,
                            image=ImageFormat.CROP_ONLY)
        reply = client.frame(crop)
        assert reply.rect is not None and (reply.width, reply.height) == (96, 96)
        with pytest.raises(ProtocolError, match="loaded without its full frames") as refused:
            client.frame(replay("lean"))
        assert refused.value.code == "bad_field"
        client.frame(replay("full"))
        listed = {p["id"]: p for p in client.packages()}
    decoded = 50 * 320 * 240 * 3
    assert listed["full"]["ram_bytes"] >= decoded and listed["lean"]["frames"] == "none"
    assert listed["lean"]["ram_bytes"] < decoded / 100


def test_run_time_loading_is_safe_by_default(avatars: dict[str, Path], tmp_path: Path):
    """Paths only under --package-dir (never saying whether an outside path exists), URLs only with
    --allow-urls, catalog ids by id; a non-loopback host needs a token."""
    body = avatars["b"].read_bytes()
    sha = hashlib.sha256(body).hexdigest()
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"packages": {"a": {"path": str(avatars["a"])}}}))
    inside = tmp_path / "packages"
    inside.mkdir()
    (inside / "b.sanders").write_bytes(body)
    with loopback_server() as http:
        url = http.route("/b.sanders", Reply(body=body))
        closed = ServerConfig(port=0, backend="onnx", onnx_cache_dir=tmp_path / "onnx", catalog=catalog)
        with running_server(closed) as server:
            post = lambda obj: httpx.post(f"{server.url}/v1/packages", json=obj, timeout=30)  # noqa: E731
            by_path = post({"id": "x", "path": str(inside / "b.sanders")})
            assert (by_path.status_code, by_path.json()["code"]) == (403, "forbidden")
            assert "--package-dir" in by_path.json()["message"]
            by_url = post({"id": "x", "url": url, "sha256": sha})
            assert (by_url.status_code, by_url.json()["code"]) == (403, "forbidden")
            assert post({"id": "a"}).status_code == 201  # a catalog id loads by id
        opened = ServerConfig(port=0, backend="onnx", onnx_cache_dir=tmp_path / "onnx", package_dir=inside,
                              allow_urls=True, cache_dir=tmp_path / "cache")
        with running_server(opened) as server:
            post = lambda obj: httpx.post(f"{server.url}/v1/packages", json=obj, timeout=30)  # noqa: E731
            assert post({"id": "rel", "path": "b.sanders"}).status_code == 201  # relative to --package-dir
            existing_outside = post({"id": "o1", "path": str(avatars["a"])}).json()
            missing_outside = post({"id": "o2", "path": str(avatars["a"].parent / "nope.sanders")}).json()
            assert existing_outside["code"] == missing_outside["code"] == "forbidden"
            assert "outside" in existing_outside["message"] and "outside" in missing_outside["message"]
            escape = post({"id": "o3", "path": "../" + avatars["a"].name}).json()
            assert escape["code"] == "forbidden"
            assert post({"id": "web", "url": url, "sha256": sha}).status_code == 201
            wrong = post({"id": "web2", "url": url, "sha256": "0" * 64}).json()
            assert wrong["code"] == "bad_package" and "sha256" in wrong["message"].lower()
    exposed = ServerConfig(host="0.0.0.0", port=0)
    with pytest.raises(UsageError, match="without a token"):
        exposed.check()  # checked only: nothing is bound
    ServerConfig(host="0.0.0.0", port=0, token="s3cret").check()
    ServerConfig(host="0.0.0.0", port=0, insecure=True).check()
    ServerConfig(host="::1", port=0).check()
