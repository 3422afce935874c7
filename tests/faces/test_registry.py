"""The face backend registry: names, errors, and lazy imports."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from lipsync_tools.errors import BackendUnavailableError, UsageError
from lipsync_tools.faces import DEFAULT_BACKEND, FACE_BACKENDS, FaceOptions, backend_names, create_backend


def test_backend_names_lists_the_default_first() -> None:
    assert backend_names() == ["mediapipe", "fan"]
    assert DEFAULT_BACKEND == "mediapipe"
    assert all(":" in target for target in FACE_BACKENDS.values())


def test_unknown_name_lists_the_known_names() -> None:
    with pytest.raises(UsageError) as raised:
        create_backend("dlib", FaceOptions())
    assert str(raised.value) == "unknown face backend 'dlib'; choose one of: mediapipe, fan"


@pytest.mark.parametrize(
    ("options", "match"),
    [(FaceOptions(max_faces=0), "max_faces"), (FaceOptions(min_confidence=1.5), "min_confidence")],
)
def test_unusable_options_are_refused(options: FaceOptions, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        create_backend("mediapipe", options)


def test_missing_mediapipe_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes ``import mediapipe`` raise ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install mediapipe==0\.10\.21"):
        create_backend("mediapipe", FaceOptions())


def test_missing_face_alignment_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "face_alignment", None)
    monkeypatch.setitem(sys.modules, "face_alignment.models", None)
    with pytest.raises(BackendUnavailableError, match=re.escape("pip install 'lipsync-tools[fan]'")):
        create_backend("fan", FaceOptions())


def test_importing_the_package_imports_no_backend_dependency() -> None:
    code = (
        "import sys, lipsync_tools.faces\n"
        "heavy = [m for m in ('mediapipe', 'face_alignment', 'torch', 'cv2') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
