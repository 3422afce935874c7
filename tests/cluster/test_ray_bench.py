"""``lipsync bench --ray``: the plain server and the Ray Serve cluster measured side by side on the session's
local 2-CPU cluster, two replicas of at most two avatars, three avatars in the catalog.

One small run serves the module (three avatars of one package, five measured requests each, random weights):
the document passes its schema, every request was served by both, every avatar's requests hit one replica
(affinity 1.0, the replica that holds it at the end), the overhead figures are the difference and the ratio
of the two medians, and the report renders. The CLI's refusals need no cluster.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lipsync_tools.bench import check_result, print_report, run_scaleout, to_markdown
from lipsync_tools.cli.main import app

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

AVATARS = ("anna", "bert", "carl")
REQUESTS = 5


@pytest.fixture(scope="module")
def catalog(head_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three catalog ids for the session's talking-head package (built once for the whole test session)."""
    path = tmp_path_factory.mktemp("bench-cluster") / "catalog.json"
    path.write_text(json.dumps({"packages": {a: {"path": str(head_package)} for a in AVATARS}}))
    return path


@pytest.fixture(scope="module")
def result(ray_cluster: None, catalog: Path) -> dict[str, Any]:
    # random weights: the package embeds no checkpoint; torch: no ONNX export per replica
    return run_scaleout(catalog, requests_per_avatar=REQUESTS, warmup=2, replicas=2,
                        max_packages_per_replica=2, model="random", backend="torch", settle_ms=0)


def test_every_request_is_served_and_each_avatar_sticks_to_the_replica_that_holds_it(result: dict[str, Any]):
    check_result(result)
    assert result["kind"] == "scale-out" and result["ray"]["cluster"] == "reused"
    assert result["errors"] == {"total": 0, "listed": []}
    for target in ("plain", "ray"):
        t = result["targets"][target]
        assert t["requests"] == t["ok"] == len(AVATARS) * REQUESTS and t["errors"] == 0
    replicas = {r["replica"]: r for r in result["cluster"]["replicas"]}
    assert len(replicas) == 2
    assert [a["id"] for a in result["avatars"]] == list(AVATARS)
    for avatar in result["avatars"]:
        assert avatar["plain"]["ok"] == avatar["ray"]["ok"] == REQUESTS
        assert avatar["affinity"] == 1.0 and avatar["replicas"] == {avatar["replica"]: REQUESTS}
        assert avatar["warmup_replicas"] == [avatar["replica"]] * 2  # where its first request loaded it
        assert avatar["held_by_at_end"] == [avatar["replica"]]
        assert avatar["id"] in replicas[avatar["replica"]]["holding"]
    assert result["affinity"] == {"min": 1.0, "avatars": 3, "on_one_replica": 3, "replicas_used": 2}


def test_the_overhead_is_the_difference_and_the_ratio_of_the_medians(result: dict[str, Any]):
    plain, ray = result["targets"]["plain"], result["targets"]["ray"]
    overhead = result["overhead"]
    assert overhead["median_ms"] == pytest.approx(ray["latency_ms"]["median"] - plain["latency_ms"]["median"],
                                                  abs=0.011)
    assert overhead["ratio"] == pytest.approx(ray["latency_ms"]["median"] / plain["latency_ms"]["median"],
                                              abs=0.001)
    assert overhead["p99_ms"] == pytest.approx(ray["latency_ms"]["p99"] - plain["latency_ms"]["p99"],
                                               abs=0.011)
    assert overhead["outside_server_median_ms"] == pytest.approx(
        ray["outside_server_ms"]["median"] - plain["outside_server_ms"]["median"], abs=0.011)
    for t in (plain, ray):  # nothing asserted about this shared machine's times, only their order
        stats = t["latency_ms"]
        assert 0 < stats["median"] <= stats["p90"] <= stats["p99"] <= stats["max"]
        assert t["server_ms"]["median"] < stats["max"]


def test_the_report_renders(result: dict[str, Any]):
    from rich.console import Console

    markdown = to_markdown(result)
    assert "**Affinity: the replicas that served each avatar" in markdown
    assert "| ray / plain |  | " in markdown and "random weights" in markdown
    console = Console(file=io.StringIO(), width=200)
    print_report(result, console)
    assert "The cluster at the end" in console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray"], "give --catalog FILE"),
        (["--live", "--catalog", "c.json"], "--catalog does not apply to --live"),
        (["--ray", "--catalog", "c.json", "--quick"], "--quick does not apply to --ray"),
        (["--ray", "--compare"], "--compare and --ray, not both"),
    ],
)
def test_the_cli_refuses_what_does_not_apply_before_any_work(args: list[str], message: str):
    cli = CliRunner().invoke(app, ["bench", *args])
    assert cli.exit_code == 2 and message in cli.output


def test_without_ray_the_cli_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    catalog = tmp_path / "c.json"
    catalog.write_text('{"packages": {}}')
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    cli = CliRunner().invoke(app, ["bench", "--ray", "--catalog", str(catalog)])
    assert cli.exit_code == 14 and "pip install 'lipsync-tools[ray]'" in cli.output
    assert "lipsync bench --ray needs Ray" in cli.output
