"""``lipsync migrate``: older packages rewritten in the current format version, atomically and checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from lipsync_tools.cli.main import app
from lipsync_tools.errors import OutputExistsError, PackageFormatError, PackageVersionError
from lipsync_tools.package import migrate_package, open_package, validate_package
from lipsync_tools.package.spec import format_version_string

DATA = Path(__file__).parents[1] / "data"
runner = CliRunner()


def test_a_1_0_package_migrates_to_a_copy_and_the_original_is_untouched(tmp_path: Path) -> None:
    source = shutil.copy(DATA / "v1.0-synthetic.sanders", tmp_path / "old.sanders")
    before = Path(source).read_bytes()
    result = migrate_package(source, tmp_path / "new.sanders")
    assert result.written and result.needed and (result.from_version, result.to_version) == ("1.0", "1.2")
    assert Path(source).read_bytes() == before
    assert validate_package(tmp_path / "new.sanders") == []
    migrated = open_package(tmp_path / "new.sanders")
    assert migrated.manifest.format_version == format_version_string() == "1.2"
    assert migrated.manifest.model is not None and migrated.manifest.model.family == "wav2lip"
    with h5py.File(tmp_path / "new.sanders") as f:
        raw = json.loads(f.attrs["manifest"])
    assert raw["crop"]["box_rule"] == "padded" and raw["model"]["audio_mode"] == "mel"
    old = open_package(DATA / "v1.0-synthetic.sanders")
    assert migrated.manifest.datasets == old.manifest.datasets  # every dataset keeps its bytes
    assert [f"{c.split(':')[0]}" for c in result.changes] == ["format_version", "model", "crop.box_rule",
                                                             "footage"]


def test_in_place_dry_run_writes_nothing_then_the_real_run_replaces_the_file(tmp_path: Path) -> None:
    path = Path(shutil.copy(DATA / "v1.1-synthetic-ave.sanders", tmp_path / "p.sanders"))
    before = path.read_bytes()
    dry = migrate_package(path, dry_run=True)
    assert dry.needed and not dry.written and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.sanders"]
    done = migrate_package(path)
    assert done.written and open_package(path).manifest.format_version == "1.2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.sanders"]  # no temporary file left behind
    again = migrate_package(path)
    assert not again.needed and not again.written


def test_a_damaged_package_is_not_migrated(tmp_path: Path) -> None:
    path = Path(shutil.copy(DATA / "v1.0-synthetic.sanders", tmp_path / "bad.sanders"))
    with h5py.File(path, "r+") as f:
        f["crops"][0, 0, 0, 0] ^= 1
    with pytest.raises(PackageFormatError, match=r"does not migrate to a valid 1\.2 package.*crops"):
        migrate_package(path, tmp_path / "out.sanders")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.sanders"]


def test_refusals(tmp_path: Path) -> None:
    newer = Path(shutil.copy(DATA / "v1.2-synthetic-footage.sanders", tmp_path / "newer.sanders"))
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = "2.0"
    with pytest.raises(PackageVersionError):
        migrate_package(newer)
    taken = tmp_path / "taken.sanders"
    taken.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="--force"):
        migrate_package(DATA / "v1.0-synthetic.sanders", taken)
    assert migrate_package(DATA / "v1.0-synthetic.sanders", taken, force=True).written


def test_cli(tmp_path: Path) -> None:
    path = Path(shutil.copy(DATA / "v1.0-synthetic.sanders", tmp_path / "p.sanders"))
    dry = runner.invoke(app, ["migrate", str(path), "--dry-run"])
    assert dry.exit_code == 0 and "would migrate" in dry.output and "1.0 to 1.2" in dry.output
    done = runner.invoke(app, ["migrate", str(path), "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout)["written"] is True
    assert "nothing to do" in runner.invoke(app, ["migrate", str(path)]).output
    assert runner.invoke(app, ["migrate", str(tmp_path / "missing.sanders")]).exit_code == 3
