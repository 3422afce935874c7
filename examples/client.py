"""Talk to a running ``lipsync serve`` in both wire encodings and write a few frames to disk.

    lipsync build-package talking_head.mp4 -o alice.sanders
    lipsync serve alice.sanders --model random          # in another terminal
    python examples/client.py --package alice --audio speech.wav --out frames/

What it does (see examples/README.md): one-shot ``POST /v1/frame`` requests in the binary and the JSON
encoding (with PCM audio, and in replay mode with the package's own features), then a short WebSocket
session that streams the speech and receives frames paced by the server. It prints the server timings and
the round-trip time of each call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from lipsync_tools.client import LipsyncClient
from lipsync_tools.errors import LipsyncError
from lipsync_tools.protocol import PCM_WINDOW_SAMPLES, AudioFormat, FrameReply, FrameRequest, Pacing


def load_speech(path: Path | None, seconds: float) -> np.ndarray:
    """int16 mono 16 kHz PCM: the file (any format PyAV reads), or a synthetic vowel-like buzz."""
    if path is not None:
        from lipsync_tools.media.audio import load_audio

        samples = load_audio(path, 16000)
        return np.clip(np.asarray(samples, np.float32) * 32767, -32768, 32767).astype(np.int16)
    t = np.arange(int(seconds * 16000)) / 16000
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))  # three "syllables" a second
    buzz = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 700 * t)
    return (envelope * buzz * 8000).astype(np.int16)


def save(reply: FrameReply, out: Path, name: str) -> Path:
    """Write a JPEG/PNG reply as is (the server already encoded it)."""
    path = out / f"{name}.{reply.image.wire_name.replace('jpeg', 'jpg')}"
    path.write_bytes(bytes(reply.payload))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--package", default=None, help="package id (default: the first loaded)")
    parser.add_argument("--audio", type=Path, default=None, help="speech file (default: a synthetic buzz)")
    parser.add_argument("--seconds", type=float, default=2.0, help="session length to stream")
    parser.add_argument("--token", default=None, help="bearer token, if the server has one")
    parser.add_argument("--out", type=Path, default=Path("client-frames"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    speech = load_speech(args.audio, args.seconds)[: int(args.seconds * 16000)]

    try:
        for protocol in ("binary", "json"):
            with LipsyncClient(args.url, protocol=protocol, token=args.token) as client:
                if not client.ready(wait_seconds=120):
                    print(f"{args.url} is not ready", file=sys.stderr)
                    return 1
                package = args.package or client.packages()[0]["id"]
                window = speech[:PCM_WINDOW_SAMPLES]
                window = np.pad(window, (0, PCM_WINDOW_SAMPLES - len(window)))
                for name, request in (
                    ("pcm", FrameRequest.from_pcm(window, request_id=1, package_id=package, frame_index=0)),
                    ("replay", FrameRequest(request_id=2, package_id=package, frame_index=1,
                                            audio=AudioFormat.REPLAY)),
                ):
                    started = time.perf_counter()
                    reply = client.frame(request)
                    elapsed = (time.perf_counter() - started) * 1000
                    path = save(reply, args.out, f"oneshot-{protocol}-{name}")
                    print(f"{protocol:6} one-shot {name:6}: {reply.width}x{reply.height} in {elapsed:.1f} ms "
                          f"(server {reply.timings}) -> {path}")

        with LipsyncClient(args.url, protocol="binary", token=args.token) as client:
            package = args.package or client.packages()[0]["id"]
            with client.session(package, pacing=Pacing.REALTIME) as session:
                started = session.started
                print(f"session on {package}: {started.fps:g} fps, {started.frame_count} frames")
                count = silent = 0
                for reply in session.play(speech):
                    if count < 5:
                        save(reply, args.out, f"session-{count:03d}")
                    count += 1
                    silent += reply.silence
                print(f"session: {count} frames ({silent} silent, sent without running the model); "
                      f"the first 5 are in {args.out}/")
    except LipsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
