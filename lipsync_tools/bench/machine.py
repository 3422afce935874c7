"""Facts about the machine a benchmark ran on, so numbers can be compared honestly."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

LIBRARIES: tuple[str, ...] = (
    "lipsync-tools",
    "numpy",
    "torch",
    "onnxruntime",
    "opencv-python-headless",
    "opencv-python",
    "mediapipe",
    "av",
    "librosa",
    "uvicorn",
    "starlette",
    "websockets",
    "httpx",
)


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def gpu_name() -> str | None:
    """The first CUDA device's name, or ``None`` (torch is imported here, when facts are gathered)."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # a broken CUDA install must not break the benchmark
        return None
    return None


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that decide the numbers (missing ones left out)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def machine_facts() -> dict[str, Any]:
    """CPU, cores, memory, GPU, OS, Python, library versions and the load average right now."""
    import psutil

    return {
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count() or 0,
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu_name(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def hardware_line(facts: dict[str, Any]) -> str:
    """One line: ``CPU, N cores (M physical), X GB RAM, no GPU, Python V, torch V, onnxruntime V``."""
    libs = facts.get("libraries", {})
    gpu = facts.get("gpu") or "no GPU"
    parts = [
        f"{facts['cpu']}",
        f"{facts['cores_logical']} logical cores ({facts['cores_physical']} physical)",
        f"{facts['memory_gb']} GB RAM",
        gpu,
        f"Python {facts['python']}",
    ]
    parts += [f"{k} {libs[k]}" for k in ("torch", "onnxruntime", "mediapipe") if k in libs]
    return ", ".join(parts)
