"""One ``lipsync serve --catalog`` process with a memory budget that holds two avatars serves three, with
three different checkpoints of two families, one avatar from a URL on a loopback HTTP server, sessions on
all three over time; each answers with its own model; evictions and refusals are clear errors.

Weights are deterministic random ones (saved as users save theirs): they move pixels, they do not lip-sync.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from lipsync_tools.client import LipsyncClient
from lipsync_tools.models.audio_features import AudioEncoderChoice
from lipsync_tools.models.checkpoint import random_unet, random_wav2lip
from lipsync_tools.pipeline.build import BuildOptions, build_package
from lipsync_tools.protocol.messages import ImageFormat, Pacing
from tests.remote.http_server import Reply, loopback_server
from tests.server.servers import speech_like

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def three_avatars(astronaut_mp4: Path, talking_head_mp4: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("many")
    ckpts = {}
    for name, state in (
        ("w1", {"state_dict": random_wav2lip(1).state_dict()}),
        ("w2", {"state_dict": random_wav2lip(2).state_dict()}),
        ("unet", random_unet("synctalk2d-328", "ave", 3).state_dict()),
    ):
        ckpts[name] = folder / f"{name}.pth"
        torch.save(state, ckpts[name])
    anna = build_package(astronaut_mp4, folder / "anna.sanders", checkpoint=ckpts["w1"]).output
    (folder / "web").mkdir()  # served over HTTP, not by path
    bert = build_package(astronaut_mp4, folder / "web" / "bert.sanders", checkpoint=ckpts["w2"]).output
    sanders = build_package(
        talking_head_mp4, folder / "sanders.sanders", checkpoint=ckpts["unet"],
        options=BuildOptions(family="synctalk2d-328"), audio_encoder=AudioEncoderChoice.parse("random", 4),
    ).output
    return folder, {"anna": anna, "bert": bert, "sanders": sanders}, ckpts


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_catalog_server_three_avatars_two_families_a_budget_for_two(three_avatars, tmp_path: Path):
    folder, packages, ckpts = three_avatars
    per_wav2lip = 50 * 320 * 240 * 3 + 36_298_035 * 4
    budget = int(2.2 * per_wav2lip)  # two avatars fit, three do not
    with loopback_server() as http:
        bert_url = http.route("/bert.sanders", Reply(body=packages["bert"].read_bytes()))
        catalog = folder / "catalog.json"
        catalog.write_text(json.dumps({"packages": {
            "anna": {"path": "anna.sanders"},
            "bert": {"url": bert_url, "sha256": sha256(packages["bert"])},
            "sanders": {"path": "sanders.sanders"},
        }}))
        server = subprocess.Popen(
            [sys.executable, "-m", "lipsync_tools", "serve", "--catalog", str(catalog), "--port", "0",
             "--max-memory", f"{budget}B", "--cache-dir", str(tmp_path / "cache"),
             "--onnx-cache", str(tmp_path / "onnx"), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            line = server.stdout.readline() if server.stdout else ""
            ready = json.loads(line)
            assert ready["event"] == "ready", line
            url = ready["url"]
            keys = {}
            for name in ("anna", "sanders", "bert", "anna"):  # over time: sessions on all three
                with LipsyncClient(url) as client, client.session(
                        name, pacing=Pacing.UNPACED, image=ImageFormat.RAW_BGR) as session:
                    frames = list(session.play(speech_like(0.4)))
                assert len(frames) >= 10 and all(f.width > 0 for f in frames)
                loaded = httpx.get(f"{url}/v1/packages", timeout=10).json()["packages"]
                assert name in {p["id"] for p in loaded} and len(loaded) <= 2  # the budget holds two
                models = httpx.get(f"{url}/v1/models", timeout=10).json()["models"]
                keys[name] = next(m["key"] for m in models if name in m["packages"])
            # each avatar answered with its own model: its own checkpoint
            assert keys["anna"] == f"sha256:{sha256(ckpts['w1'])}"
            assert keys["bert"] == f"sha256:{sha256(ckpts['w2'])}"
            assert keys["sanders"].startswith(f"sha256:{sha256(ckpts['unet'])}+ave:")
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
            evictions = next(float(line.split()[-1]) for line in metrics.splitlines()
                             if line.startswith("lipsync_package_evictions_total"))
            assert evictions >= 2
            assert server.poll() is None  # never a crash
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
