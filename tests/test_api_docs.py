"""docs/api.md's snippets run as written: build, serve and ask for a frame, render (and the API they use
is what ``lipsync_tools`` exports)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import lipsync_tools

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", API_DOC.read_text(), flags=re.S)


def test_every_exported_name_resolves_and_importing_is_cheap():
    import subprocess
    import sys

    assert set(lipsync_tools.__all__) == {"__version__", *lipsync_tools._EXPORTS}
    for name in lipsync_tools.__all__:
        assert getattr(lipsync_tools, name) is not None
    assert lipsync_tools.__version__.count(".") == 2
    with pytest.raises(AttributeError):
        lipsync_tools.no_such_name  # noqa: B018
    probe = "import sys, lipsync_tools; print('torch' in sys.modules, 'starlette' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_the_snippets_run_in_order(talking_head_mp4: Path, speech_wav: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    shutil.copy(talking_head_mp4, tmp_path / "talking_head.mp4")
    shutil.copy(speech_wav, tmp_path / "speech.wav")
    monkeypatch.chdir(tmp_path)
    blocks = snippets()
    assert len(blocks) == 4
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(API_DOC), "exec"), namespace)
    assert (tmp_path / "avatar.sanders").is_file() and (tmp_path / "out.mp4").is_file()
    printed = capsys.readouterr().out
    assert "bytes of JPEG" in printed and "fps" in printed
    assert "(176, 144, " in printed  # the engine snippet's two frames, at the package's size
