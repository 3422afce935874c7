"""``lipsync serve --ray`` on a local 2-CPU Ray cluster: two replicas holding at most two avatars each, three
avatars in the catalog (each with its own embedded random checkpoint), the unchanged clients.

One Serve application serves every test of this module (in file order: the last one kills a replica).
Checked: every avatar answered by its own model (one against a plain server's answer), affinity (repeated
requests hit the replica holding the avatar), a live session through the ingress, a replica killed during a
session (its session and the next requests get the retryable ``overloaded``, later ones are served by a live
replica), and the eviction on the full replica that takes the lost avatar over.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from lipsync_tools.client import LipsyncClient
from lipsync_tools.errors import ProtocolError
from lipsync_tools.models.checkpoint import random_wav2lip
from lipsync_tools.pipeline.build import build_package
from lipsync_tools.protocol import CODECS, ErrorCode, FrameReply, FrameRequest, ImageFormat, Pacing
from lipsync_tools.server import ServerConfig
from tests.server.servers import noise_window, running_server, speech_like

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

AVATARS = ("anna", "bert", "carl")
BINARY = CODECS["binary"]


@pytest.fixture(scope="module")
def catalog(astronaut_mp4: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three avatars of one clip, each with its own random Wav2Lip checkpoint embedded, and their catalog."""
    folder = tmp_path_factory.mktemp("cluster")
    entries = {}
    for seed, name in enumerate(AVATARS, 1):
        checkpoint = folder / f"{name}.pth"
        torch.save({"state_dict": random_wav2lip(seed).state_dict()}, checkpoint)
        build_package(astronaut_mp4, folder / f"{name}.sanders", checkpoint=checkpoint)
        checkpoint.unlink()  # only the package's copy is left
        entries[name] = {"path": f"{name}.sanders"}
    path = folder / "catalog.json"
    path.write_text(json.dumps({"packages": entries}))
    return path


def server_config(catalog: Path) -> ServerConfig:
    # torch: no ONNX export per replica; one frame per batch keeps the answers comparable
    return ServerConfig(port=0, catalog=catalog, backend="torch", max_batch=1, max_wait_ms=0.0)


@pytest.fixture(scope="module")
def cluster(ray_cluster: None, catalog: Path) -> Any:
    from lipsync_tools.cluster.serve import RayOptions, start_on_ray

    running = start_on_ray(server_config(catalog), RayOptions(replicas=2, max_packages_per_replica=2))
    try:
        yield running
    finally:
        running.stop()


def request(avatar: str, frame_index: int = 3) -> FrameRequest:
    return FrameRequest.from_pcm(noise_window(), request_id=7, package_id=avatar, frame_index=frame_index,
                                 image=ImageFormat.RAW_BGR)


def post_frame(url: str, avatar: str, frame_index: int = 3) -> httpx.Response:
    return httpx.post(f"{url}/v1/frame", content=BINARY.encode(request(avatar, frame_index)),
                      headers={"Content-Type": BINARY.content_type}, timeout=120)


def pixels(reply: FrameReply) -> np.ndarray:
    return np.frombuffer(reply.payload, np.uint8).astype(np.int16)


def distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).sum())


def drain(session: Any) -> None:
    while session.next_frame(timeout=30) is not None:
        pass


def replicas(url: str) -> dict[str, dict[str, Any]]:
    listed = httpx.get(f"{url}/v1/cluster", timeout=30).json()["replicas"]
    return {r["replica"]: r for r in listed}


def test_every_avatar_answers_with_its_own_model_on_the_replica_that_holds_it(cluster: Any, catalog: Path):
    url = cluster.url
    frames: dict[str, np.ndarray] = {}
    served_by: dict[str, str] = {}
    for avatar in AVATARS:  # one after the other: Serve puts a new id on the replica holding fewest
        response = post_frame(url, avatar)
        assert response.status_code == 200, response.content[:300]
        frames[avatar] = pixels(BINARY.decode(response.content))
        served_by[avatar] = response.headers["X-Lipsync-Replica"]
    for avatar in AVATARS:  # affinity: the same replica again, the same answer
        again = post_frame(url, avatar)
        assert again.headers["X-Lipsync-Replica"] == served_by[avatar]
        assert np.array_equal(pixels(BINARY.decode(again.content)), frames[avatar])
    assert len(set(served_by.values())) == 2  # both replicas serve

    # Each avatar has its own model: one frame and one audio window, three different answers (the models
    # change the mouth region only) ...
    for a, b in (("anna", "bert"), ("anna", "carl"), ("bert", "carl")):
        assert distance(frames[a], frames[b]) > 0
    # ... and anna's is the one a plain server renders with anna's checkpoint (Ray gives a 0.5-CPU replica
    # one torch thread: float sums may round differently, nothing more)
    with running_server(server_config(catalog)) as plain, LipsyncClient(plain.url) as client:
        reference = pixels(client.frame(request("anna")))
    assert distance(frames["anna"], reference) < 0.05 * distance(frames["bert"], reference)
    assert distance(frames["anna"], reference) < 0.05 * distance(frames["carl"], reference)

    held = replicas(url)
    assert len(held) == 2
    for avatar, replica in served_by.items():
        assert avatar in held[replica]["holding"]
    assert sorted(len(r["holding"]) for r in held.values()) == [1, 2]
    packages = httpx.get(f"{url}/v1/packages", timeout=30).json()["packages"]
    assert {p["id"]: p["replicas"] for p in packages} == {avatar: [served_by[avatar]] for avatar in AVATARS}
    # the facts a plain server lists, so its clients (lipsync render --server) find what they need
    assert all((p["n_frames"], p["width"], p["height"], p["held"]) == (50, 320, 240, True) for p in packages)


def test_lipsync_render_through_the_cluster_as_through_a_plain_server(cluster: Any, tmp_path: Path,
                                                                      speech_wav: Path):
    from lipsync_tools.render import render_video

    rendered = render_video("bert", speech_wav, tmp_path / "bert.mp4", server_url=cluster.url)
    assert rendered.frames >= 25 and (rendered.width, rendered.height) == (320, 240)
    assert (tmp_path / "bert.mp4").stat().st_size > 0


def test_a_live_session_and_errors_through_the_ingress_with_the_plain_client(cluster: Any):
    with LipsyncClient(cluster.url) as client:
        assert client.ready(wait_seconds=30)
        with client.session("carl", pacing=Pacing.UNPACED, image=ImageFormat.RAW_BGR) as session:
            frames = list(session.play(speech_like(0.4)))
        assert len(frames) >= 10 and all(f.width == 320 and f.height == 240 for f in frames)
        with pytest.raises(ProtocolError) as unknown:
            client.frame(request("zoe"))
        assert unknown.value.code == ErrorCode.UNKNOWN_PACKAGE
        assert "not in this cluster's catalog" in str(unknown.value)
    refused = httpx.post(f"{cluster.url}/v1/packages", json={"id": "zoe"}, timeout=30)
    assert refused.status_code == 403


def test_a_killed_replica_is_replaced_and_its_avatar_evicts_on_the_survivor(cluster: Any):
    url = cluster.url
    held = replicas(url)
    victim = next(r for r in held.values() if len(r["holding"]) == 1)
    survivor = next(r for r in held.values() if r is not victim)
    avatar = victim["holding"][0]
    with LipsyncClient(url) as client, client.session(avatar, pacing=Pacing.REALTIME) as session:
        session.send_audio(speech_like(3.0))
        assert session.next_frame(timeout=30) is not None
        os.kill(victim["pid"], signal.SIGKILL)
        with pytest.raises(ProtocolError) as lost:
            drain(session)
    assert lost.value.code == ErrorCode.OVERLOADED
    assert str(lost.value).endswith(f"the replica serving {avatar!r} was lost; retry")

    answers = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # what a client does with a retryable error: retry
        response = post_frame(url, avatar)
        answers.append(response.status_code)
        if response.status_code == 200:
            break
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert BINARY.decode(response.content).code == ErrorCode.OVERLOADED
        time.sleep(0.2)
    assert answers[-1] == 200, answers
    # The survivor, full with two avatars, took it over: its least recently used one was let go.
    assert response.headers["X-Lipsync-Replica"] == survivor["replica"]
    now = replicas(url)[survivor["replica"]]["holding"]
    assert avatar in now and len(now) == 2 and set(now) != set(survivor["holding"])

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(held := replicas(url)) < 2:  # Ray starts a new replica
        time.sleep(0.5)
    assert len(held) == 2 and victim["replica"] not in held
    for other in AVATARS:  # every avatar served again, the evicted one loaded where it is asked for
        assert post_frame(url, other).status_code == 200


# --- without a cluster: the ingress's answers to a lost replica and a missing token; the clear errors -----


class LostReplicas:
    """A stand-in for the frame deployment's handle whose replica always dies mid-request."""

    def options(self, **_: object) -> LostReplicas:
        return self

    @property
    def frame(self) -> Any:
        return self

    async def _fail(self) -> Any:
        from ray.exceptions import ActorDiedError

        raise ActorDiedError

    def remote(self, *_: object) -> Any:
        return self._fail()


def test_the_ingress_answers_a_lost_replica_retryably_and_checks_the_token(catalog: Path):
    from starlette.testclient import TestClient

    from lipsync_tools.cluster.ingress import LipsyncIngress, create_ingress_app
    from lipsync_tools.cluster.replica import ClusterSettings

    config = ServerConfig(port=0, catalog=catalog, token="s3cret")
    settings = ClusterSettings(config=config, replicas=2, max_packages_per_replica=2, internal_token="x")
    app = create_ingress_app(LipsyncIngress(LostReplicas(), settings))  # type: ignore[arg-type]
    body = BINARY.encode(request("anna"))
    with TestClient(app) as http:
        assert http.post("/v1/frame", content=body).status_code == 401
        lost = http.post("/v1/frame", content=body, headers={
            "Content-Type": BINARY.content_type, "Authorization": "Bearer s3cret"})
        assert http.get("/healthz").status_code == 200  # no token needed
    assert lost.status_code == 503 and lost.headers["Retry-After"] == "1"
    reply = BINARY.decode(lost.content)
    assert reply.code == ErrorCode.OVERLOADED and reply.request_id == 7
    assert reply.message == "the replica serving 'anna' was lost; retry"


def test_without_ray_or_a_catalog_the_errors_say_what_to_do(monkeypatch: pytest.MonkeyPatch, catalog: Path):
    from lipsync_tools.cluster.connect import require_ray
    from lipsync_tools.cluster.serve import RayOptions, check_cluster_config
    from lipsync_tools.errors import BackendUnavailableError, UsageError

    with pytest.raises(UsageError, match="give --catalog FILE"):
        check_cluster_config(ServerConfig(port=0), RayOptions())
    with pytest.raises(UsageError, match="--replicas must be at least 1"):
        check_cluster_config(ServerConfig(port=0, catalog=catalog), RayOptions(replicas=0))
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'lipsync-tools\[ray\]'"):
        require_ray("lipsync serve --ray")
