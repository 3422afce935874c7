#!/usr/bin/env bash
# The GPU paths of the inference backends (issue 12), on a machine that has an NVIDIA GPU. CI never runs this.
#
#     scripts/gpu-check.sh            # PYTHON=... to use another interpreter than .venv/bin/python
#
# Needs a CUDA build of torch and/or onnxruntime-gpu (pip install 'lipsync-tools[gpu]'); TensorRT is used when
# onnxruntime-gpu can load it. Prints nvidia-smi, what torch and ONNX Runtime see, then for Wav2Lip and
# SyncTalk_2D-328 (random weights) runs torch fp32/fp16 and onnx fp32/fp16/int8 on cuda:0: checks the output
# shape, its PSNR against the CPU fp32 model on the same held-out inputs, and times batch 1, 8 and 16 (median
# ms per frame). The last line is one JSON object. Exit status: 0 all ran and passed, 1 a case failed
# (wrong shape, PSNR under its floor, an error), 2 no GPU. A case whose runtime is missing (no CUDA torch,
# no TensorRT for int8) is reported as unavailable, not failed. Takes 1-4 minutes (TensorRT engine builds).
# GPU_CHECK_TENSORRT=all also runs fp32/fp16 through TensorRT (slower: an engine build per case); by default
# TensorRT runs only int8, which needs it, and fp32/fp16 run on ONNX Runtime's CUDA provider.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi not found); run this on a machine with one" >&2
    echo '{"ok": false, "error": "no GPU: nvidia-smi not found"}'
    exit 2
fi
echo "== nvidia-smi"
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv || {
    echo "gpu-check: nvidia-smi found no usable GPU (driver not loaded?)" >&2
    echo '{"ok": false, "error": "no GPU: nvidia-smi failed"}'
    exit 2
}

exec "$PYTHON" - <<'PY'
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from lipsync_tools.errors import BackendUnavailableError, LipsyncError
from lipsync_tools.models import BackendOptions, CalibrationSet, create_backend, get_family, psnr, random_network

FAMILIES = ("wav2lip", "synctalk2d-328")
CASES = (("torch", "fp32"), ("torch", "fp16"), ("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"))
BATCHES = (16, 1, 8)  # largest first: a TensorRT engine is then built for the whole range at most twice
REPEATS = 15
# PSNR floors against the CPU fp32 model (random weights): fp32 on another device differs by rounding only;
# fp16 and int8 by their precision. Not quality claims: a regression guard against a broken path.
MIN_PSNR = {"fp32": 40.0, "fp16": 30.0, "int8": 20.0}
BUDGET_S = 240.0  # timing stops after this, so the whole check stays under 5 minutes
started = time.perf_counter()

print("== torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available(),
      "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print(f"   cuda:{i} {torch.cuda.get_device_name(i)}")
providers = ort.get_available_providers()
print("== onnxruntime", ort.__version__, "providers", ", ".join(providers))
if not torch.cuda.is_available() and "CUDAExecutionProvider" not in providers:
    print("gpu-check: neither torch nor onnxruntime can use a GPU: install a CUDA build of torch and/or "
          "onnxruntime-gpu in place of onnxruntime (docs/models.md, Precision and devices)", file=sys.stderr)
    print(json.dumps({"ok": False, "error": "no GPU visible to torch or onnxruntime"}))
    sys.exit(2)
all_tensorrt = os.environ.get("GPU_CHECK_TENSORRT") == "all"
real_providers = ort.get_available_providers


def inputs(family, shape, count, seed):
    """Face-like crops (smooth gradients plus noise) and audio windows scaled like mel/AVE features."""
    rng = np.random.default_rng(seed)
    s = family.crop_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) * (96.0 / s)
    base = np.stack([60 + xx, 90 + yy, 140 + 0.25 * (xx + yy)], axis=-1)
    crops = np.clip(base[None] + rng.normal(0, 12, (count, s, s, 3)), 0, 255).astype(np.uint8)
    audio = np.clip(rng.standard_normal((count, *shape)) * 1.5, -4, 4).astype(np.float32)
    return crops, audio


def median_ms_per_frame(backend, crops, audio, batch):
    c, a = np.ascontiguousarray(crops[:batch]), np.ascontiguousarray(audio[:batch])
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        backend.infer(c, a)
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times) / batch, 3)


results = []
with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
    cache = Path(tmp)
    for name in FAMILIES:
        family = get_family(name)
        network = random_network(family, None, 0)
        shape = network.audio_mode.network_shape
        crops, audio = inputs(family, shape, 16, 1)
        calibration = CalibrationSet.from_crops(family, *inputs(family, shape, 8, 2))
        cpu = create_backend("onnx", copy.deepcopy(network.module), BackendOptions(onnx_cache_dir=cache), family)
        reference = cpu.infer(crops[:8], audio[:8])
        cpu_ms = median_ms_per_frame(cpu, crops, audio, 8)
        for kind, precision in CASES:
            row = {"family": name, "backend": kind, "precision": precision, "device": "cuda:0"}
            hide_tensorrt = kind == "onnx" and precision != "int8" and not all_tensorrt
            ort.get_available_providers = (
                (lambda: [p for p in real_providers() if p != "TensorrtExecutionProvider"])
                if hide_tensorrt else real_providers
            )
            try:
                t0 = time.perf_counter()
                options = BackendOptions(device="cuda:0", precision=precision, onnx_cache_dir=cache,
                                         calibration=calibration if precision == "int8" else None)
                backend = create_backend(kind, copy.deepcopy(network.module), options, family)
                row["providers"] = getattr(backend, "providers", ["torch"])
                out = backend.infer(crops[:8], audio[:8])
                row["start_s"] = round(time.perf_counter() - t0, 2)  # export, quantization, engine build
                shape_ok = out.shape == reference.shape and out.dtype == np.uint8
                value = psnr(reference, out)
                row["psnr_db"] = None if value == float("inf") else round(value, 2)
                row["ok"] = bool(shape_ok and value >= MIN_PSNR[precision])
                if not shape_ok:
                    row["error"] = f"output {out.dtype} {out.shape}, expected uint8 {reference.shape}"
                if time.perf_counter() - started < BUDGET_S:
                    for batch in BATCHES:  # warm-up: every shape once (TensorRT builds for the range)
                        backend.infer(crops[:batch], audio[:batch])
                    row["ms_per_frame"] = {b: median_ms_per_frame(backend, crops, audio, b) for b in (1, 8, 16)}
                else:
                    row["ms_per_frame"] = "skipped: time budget"
            except BackendUnavailableError as exc:
                row.update(ok=None, unavailable=str(exc))
            except (LipsyncError, RuntimeError, ValueError) as exc:
                row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            finally:
                ort.get_available_providers = real_providers
            print("  ", json.dumps(row), flush=True)
            results.append(row)
        results.append({"family": name, "backend": "onnx", "precision": "fp32", "device": "cpu",
                        "ms_per_frame": {8: cpu_ms}, "ok": True})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

failed = [r for r in results if r["ok"] is False]
ran = [r for r in results if r["ok"] is True and r["device"] != "cpu"]
summary = {"ok": not failed and bool(ran), "seconds": round(time.perf_counter() - started, 1),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "torch": torch.__version__, "onnxruntime": ort.__version__, "results": results}
print(json.dumps(summary))
sys.exit(0 if summary["ok"] else 1)
PY
