"""``lipsync models quantize``: a package's int8 model made ahead of serving, in the cache a server reads."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from lipsync_tools.cli.main import app
from lipsync_tools.engine.model_loader import PackageModelHints, RuntimeChoice, load_model
from lipsync_tools.package import open_package

runner = CliRunner()


def test_quantize_writes_the_int8_model_a_server_then_finds(head_package: Path, tmp_path: Path):
    cache = tmp_path / "onnx"
    args = ["models", "quantize", str(head_package), "--onnx-cache", str(cache), "--model", "random"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    made = Path(summary["model_path"])
    assert made.parent == cache and "int8" in made.name and made.is_file()
    assert summary["quality"]["frames"] == 16 and summary["is_random"] is True
    assert summary["passed"] == (summary["quality"]["psnr_db"] >= 30)
    stamp = made.stat().st_mtime_ns
    # what serve --precision int8 --onnx-cache does: the same file, not made again
    package = open_package(head_package, mmap=True, load_frames=False)
    loaded = load_model("random", seed=0, backend="onnx", cache_dir=cache, warmup_batches=(),
                        hints=PackageModelHints.from_package(package, with_checkpoint=False),
                        runtime=RuntimeChoice(precision="int8", force_precision=True))
    assert loaded.backend.model_path == made  # type: ignore[attr-defined]
    assert made.stat().st_mtime_ns == stamp


def test_quantize_says_what_is_missing(head_package: Path, tmp_path: Path):
    no_weights = runner.invoke(app, ["models", "quantize", str(head_package), "--onnx-cache", str(tmp_path)])
    assert no_weights.exit_code != 0 and "--checkpoint" in no_weights.output
    no_cache = runner.invoke(app, ["models", "quantize", str(head_package), "--model", "random"])
    assert no_cache.exit_code == 2 and "--onnx-cache" in no_cache.output
    missing = runner.invoke(app, ["models", "quantize", str(tmp_path / "nope.sanders"), "--onnx-cache",
                                  str(tmp_path), "--model", "random"])
    assert missing.exit_code != 0 and "nope.sanders" in missing.output
