"""The engine's batch size and wait: chosen at startup from the startup model's measured speed unless given,
and reported at startup (text and ``--json``) and in ``GET /v1/models``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from lipsync_tools.engine import EngineOptions
from lipsync_tools.engine.capacity import Capacity, choose_batching
from lipsync_tools.engine.model_loader import ModelInfo
from lipsync_tools.server import PackageSpec, ServerConfig, StartupReport, format_startup
from tests.server.fake_engine import fake_server
from tests.server.servers import PACKAGE_ID, running_server

pytestmark = [pytest.mark.timeout(120)]


def identity_config(package: Path, **overrides: Any) -> ServerConfig:
    """The identity model on torch: loads and measures in a fraction of a second."""
    base = ServerConfig(packages=(PackageSpec(id=PACKAGE_ID, path=package),), port=0, model="identity",
                        backend="torch", warmup_frames=1)
    return replace(base, **overrides)


def models_listing(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/models", timeout=10)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_the_config_measures_what_it_is_not_given() -> None:
    measured = ServerConfig()
    assert (measured.max_batch, measured.max_wait_ms) == (None, None)
    assert measured.model_defaults().capacity_batches == (1, 2, 4, 8)  # 16 too once the model is on a GPU
    options, defaults = measured.engine_options(), EngineOptions()  # check() validates before measuring
    assert (options.max_batch, options.max_wait_ms) == (defaults.max_batch, defaults.max_wait_ms)
    assert ServerConfig(max_batch=4).model_defaults().capacity_batches == (1, 2, 4)

    capacity = Capacity({1: 0.038, 2: 0.066, 4: 0.136, 8: 0.270})
    chosen = measured.batching(capacity, measured_on="random:wav2lip:mel:seed0")
    assert chosen == replace(choose_batching(capacity), measured_on="random:wav2lip:mel:seed0")
    engine = measured.with_batching(chosen).engine_options()
    assert (engine.max_batch, engine.max_wait_ms) == (2, 9.5)
    given = ServerConfig(max_batch=8, max_wait_ms=4.0).batching(capacity, measured_on="m")
    assert (given.max_batch, given.max_batch_source, given.max_wait_ms, given.max_wait_source) == (
        8, "given", 4.0, "given")
    nothing = measured.batching(None)
    assert (nothing.max_batch_source, nothing.measured_on) == ("default", None)


def test_the_startup_report_prints_the_curve_and_the_choice() -> None:
    capacity = Capacity({1: 0.038, 2: 0.066}, measure_seconds=1.234, measure_rounds=3)
    report = StartupReport(
        url="http://127.0.0.1:8000",
        seconds={"package_open": 0.01, "frame_preload": 0.02, "feature_mapping": 0.0, "total": 1.5},
        model=ModelInfo(name="random", source="seed 0", is_random=False, backend="onnx", load_seconds=0.5),
        packages=[], rss_bytes=1 << 20,
        batching=replace(choose_batching(capacity), measured_on="random:wav2lip:mel:seed0"),
    )
    lines = format_startup(report).splitlines()
    at = lines.index("  batching  max batch 2 (measured), max wait 9.5 ms (measured), for every model")
    assert lines[at + 1:at + 3] == [
        "  measured  ms per frame by batch size 1: 38, 2: 33 (median of 3 calls each, 1.23 s)",
        "            max batch 2: 33 ms/frame, the best measured; max wait 9.5 ms: 25% of one single-frame "
        "call (38 ms), at most 10 ms",
    ]
    assert report.to_dict()["batching"]["measured_on"] == "random:wav2lip:mel:seed0"
    given = replace(report, batching=choose_batching(Capacity(), max_batch=8, max_wait_ms=4.0))
    assert "  batching  max batch 8 (given), max wait 4 ms (given), for every model" in format_startup(given)
    assert "  measured" not in format_startup(given)


def test_the_startup_report_of_a_catalog_server_with_no_model_loaded_yet() -> None:
    from lipsync_tools.engine.model_store import ModelsSummary

    report = StartupReport(
        url="http://127.0.0.1:8000",
        seconds={"package_open": 0.0, "frame_preload": 0.0, "feature_mapping": 0.0, "total": 0.2},
        model=ModelsSummary(infos=[], models=[]), packages=[], rss_bytes=1 << 20,
    )
    assert "  model     none loaded yet: each package's model loads with it, on first use" in (
        format_startup(report).splitlines())


@pytest.mark.slow
def test_measured_batching_runs_the_engine_and_is_reported(avatar_package: Path) -> None:
    with running_server(identity_config(avatar_package)) as server:
        state = server.state
        batching = state.batching
        assert batching is not None
        assert (batching.max_batch_source, batching.max_wait_source) == ("measured", "measured")
        assert list(batching.batch_ms) == [1, 2, 4, 8] and batching.measure_rounds >= 1
        assert batching.measured_on == "identity:wav2lip:mel"  # the startup package's model
        rule = choose_batching(Capacity({b: ms / 1000 for b, ms in batching.batch_ms.items()}))
        assert rule.max_batch == batching.max_batch  # the rule, on the measured curve
        assert rule.max_wait_ms == pytest.approx(batching.max_wait_ms, abs=0.002)
        options = state.engine.options  # type: ignore[union-attr]
        assert (options.max_batch, options.max_wait_ms) == (batching.max_batch, batching.max_wait_ms)
        assert state.admission.max_batch == batching.max_batch
        report = state.startup_report
        assert report is not None and report.batching is batching
        assert report.to_dict()["batching"] == batching.to_dict()
        lines = format_startup(report).splitlines()
        assert (f"  batching  max batch {batching.max_batch} (measured), max wait "
                f"{batching.max_wait_ms:g} ms (measured), for every model") in lines
        assert any(line.startswith("  measured  ms per frame by batch size 1: ") for line in lines)

        listing = models_listing(server.url)
        assert listing["batching"] == batching.to_dict()
        assert [m["batching"] for m in listing["models"]] == [batching.summary()]
        assert listing["models"][0]["capacity"]["measure_rounds"] == batching.measure_rounds


@pytest.mark.slow
def test_given_batching_is_kept_and_reported_as_given(avatar_package: Path) -> None:
    with running_server(identity_config(avatar_package, max_batch=3, max_wait_ms=7.5)) as server:
        batching = server.state.batching
        assert batching is not None
        assert (batching.max_batch, batching.max_batch_source) == (3, "given")
        assert (batching.max_wait_ms, batching.max_wait_source) == (7.5, "given")
        assert list(batching.batch_ms) == [1, 2, 3]  # still measured, for admission: up to the given size
        options = server.state.engine.options  # type: ignore[union-attr]
        assert (options.max_batch, options.max_wait_ms) == (3, 7.5)
        summary = models_listing(server.url)["models"][0]["batching"]
        assert summary == {"max_batch": 3, "max_wait_ms": 7.5, "max_batch_source": "given",
                           "max_wait_source": "given", "measured_on": "identity:wav2lip:mel"}


@pytest.mark.slow
def test_an_engine_that_does_not_batch_by_measurement_reports_no_batching() -> None:
    with fake_server() as (server, _):
        assert server.state.batching is None
        assert server.state.startup_report is not None and server.state.startup_report.batching is None
        listing = models_listing(server.url)
        assert listing["batching"] is None and "batching" not in listing["models"][0]
