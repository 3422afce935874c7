"""The fan backend finds its weights on disk only, and says exactly what is missing and where to put it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lipsync_tools.errors import CheckpointError, MissingWeightsError
from lipsync_tools.faces import FaceOptions, create_backend
from lipsync_tools.faces.fan_backend import FAN_WEIGHTS_FILE, FAN_WEIGHTS_URL, find_fan_weights
from tests.faces.test_contract import save_random_fan_weights


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Make every socket connection attempt fail loudly and record it."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_missing_weights_error_names_file_folders_url_and_option(
    tmp_path: Path, empty_torch_home: Path, no_network: list[object]
) -> None:
    weights_dir = tmp_path / "weights"
    with pytest.raises(MissingWeightsError) as raised:
        create_backend("fan", FaceOptions(weights_dir=weights_dir))
    message = str(raised.value)
    assert "\n" not in message
    assert FAN_WEIGHTS_FILE in message
    assert str(weights_dir) in message
    assert str(empty_torch_home / "hub" / "checkpoints") in message
    assert FAN_WEIGHTS_URL in message
    assert "--weights-dir" in message
    assert message.index(str(weights_dir)) < message.index(str(empty_torch_home))
    assert no_network == []
    assert not (empty_torch_home / "hub" / "checkpoints" / FAN_WEIGHTS_FILE).exists()


def test_missing_weights_without_weights_dir_searches_the_hub_cache(
    empty_torch_home: Path, no_network: list[object]
) -> None:
    with pytest.raises(MissingWeightsError, match="hub/checkpoints") as raised:
        create_backend("fan", FaceOptions())
    assert raised.value.exit_code == MissingWeightsError.exit_code
    assert no_network == []


def test_weights_dir_takes_precedence_over_the_hub_cache(tmp_path: Path, empty_torch_home: Path) -> None:
    hub_file = empty_torch_home / "hub" / "checkpoints" / FAN_WEIGHTS_FILE
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"")
    assert find_fan_weights(None) == hub_file
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    (weights_dir / FAN_WEIGHTS_FILE).write_bytes(b"")
    assert find_fan_weights(weights_dir) == weights_dir / FAN_WEIGHTS_FILE
    assert find_fan_weights(tmp_path / "elsewhere") == hub_file


def test_weights_dir_is_loaded(tmp_path: Path, empty_torch_home: Path, no_network: list[object]) -> None:
    save_random_fan_weights(tmp_path / "weights")
    backend = create_backend("fan", FaceOptions(weights_dir=tmp_path / "weights"))
    backend.close()
    assert no_network == []


def test_a_file_that_is_not_a_fan_state_dict_is_refused(tmp_path: Path, empty_torch_home: Path) -> None:
    (tmp_path / FAN_WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a FAN-4 state dict"):
        create_backend("fan", FaceOptions(weights_dir=tmp_path))
