"""Berth's metrics as a real Prometheus (Debian's ``prometheus``) scrapes them: the API
with a metrics token, the scaler and the agent on their own ports; PromQL answers
match what was sent, and every query of the Grafana dashboard and of the alert
rules evaluates without error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from berth.local import ROOT, free_port, stop_process
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.e2e

DEPLOY = ROOT / "deploy"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        reason = f"{name} is not installed (Debian: prometheus)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]  # type: ignore[no-any-return]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def reaches(self, expr: str, expected: float, what: str = "") -> None:
        """Until ``expr`` evaluates to ``expected`` (scrapes come every second, and one
        that times out on a loaded machine leaves its target's series stale a moment)."""
        wait_for(lambda: self.value(expr) == expected, 30, what or f"{expr} == {expected}")


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = _binary("prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    with stack.client() as c:
        made = c.post("/v1/tokens", json={"name": "prometheus", "scopes": ["metrics"]})
        assert made.status_code == 201, made.text
    (folder / "metrics-token").write_text(made.json()["token"])
    host = lambda url: re.sub(r"^https?://([^/]+).*$", r"\1", url)  # noqa: E731
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "berth-api",
                "authorization": {
                    "type": "Bearer",
                    "credentials_file": str(folder / "metrics-token"),
                },
                "static_configs": [{"targets": [host(stack.url)]}],
            },
            {
                "job_name": "berth-scaler",
                "static_configs": [{"targets": [host(stack.metrics["scaler"])]}],
            },
            {
                "job_name": "berth-agent",
                "static_configs": [{"targets": [host(stack.metrics["agent"])]}],
            },
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (folder / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def all_up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError((folder / "prometheus.log").read_text()[-2000:])
            try:
                return prom.value('count(up{job=~"berth-.*"} == 1)') == 3
            except (httpx.HTTPError, AssertionError, ValueError):  # still starting
                return False

        wait_for(all_up, 60, "Prometheus scraping the API, the scaler and the agent")
        yield prom
    finally:
        stop_process(proc, grace=10)


def test_metrics_need_a_token_with_the_metrics_scope(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=10) as anon:
        assert anon.get("/metrics").status_code == 401
    with stack.client() as c:
        inference = c.post("/v1/tokens", json={"name": "i", "scopes": ["inference"]}).json()
        scraper = c.post("/v1/tokens", json={"name": "m", "scopes": ["metrics"]}).json()
    with httpx.Client(base_url=stack.url, timeout=10) as c:
        denied = c.get("/metrics", headers={"Authorization": f"Bearer {inference['token']}"})
        assert denied.status_code == 403
        allowed = c.get("/metrics", headers={"Authorization": f"Bearer {scraper['token']}"})
        assert allowed.status_code == 200
        assert allowed.headers["content-type"].startswith("text/plain")
        # A metrics token is for scraping only.
        control = c.get("/v1/endpoints", headers={"Authorization": f"Bearer {scraper['token']}"})
        assert control.status_code == 403
    # The scaler's and the agent's listen on loopback only.
    assert all(url.startswith("http://127.0.0.1:") for url in stack.metrics.values())


def test_promql_counts_what_was_sent(prometheus: Prometheus, stack: Stack, name: str) -> None:
    stack.deploy(name, "probe", min_replicas=1, max_replicas=1)
    stack.wait_ready(name)
    with stack.client() as c:
        for i in range(7):
            assert c.post(f"/e/{name}/infer", json={"prompt": str(i)}).status_code == 200
        assert c.post(f"/e/{name}/infer", json={"nope": 1}).status_code == 422
        job = c.post(f"/e/{name}/infer", json={"prompt": "j"}, headers={"X-OctoAI-Async": "1"})
        assert job.status_code == 202

    sel = f'endpoint="{name}"'
    prometheus.reaches(f'sum(berth_requests_total{{{sel}, code="200"}})', 7, "seven 200s counted")
    prometheus.reaches(f'sum(berth_requests_total{{{sel}, code="422"}})', 1)
    prometheus.reaches(f'sum(berth_requests_total{{{sel}, mode="async"}})', 1)
    prometheus.reaches(
        f'sum(berth_jobs_total{{{sel}, status="completed"}})',
        1,
        "the job's completion counted (by the agent)",
    )
    prometheus.reaches(f'sum(berth_jobs_total{{{sel}, status="pending"}})', 1)
    # The agent's side: queue wait and replica time, one observation per request taken.
    prometheus.reaches(
        f"sum(berth_replica_request_duration_seconds_count{{{sel}}})", 9, "nine replica calls"
    )
    prometheus.reaches(f"sum(berth_queue_wait_seconds_count{{{sel}}})", 9)
    prometheus.reaches(f'sum(berth_cold_start_seconds_count{{{sel}, outcome="ready"}})', 1)
    prometheus.reaches(f'sum(berth_agent_replicas{{{sel}, state="ready"}})', 1)
    # The scaler's: the decision that started it, and desired = actual = 1.
    prometheus.reaches(
        f'sum(berth_scaler_decisions_total{{{sel}, reason="min_replicas"}})', 1, "the decision"
    )
    prometheus.reaches(
        f"sum(berth_scaler_actual_replicas{{{sel}}})", 1, "the scaler's replica count"
    )
    prometheus.reaches(f"sum(berth_scaler_desired_replicas{{{sel}}})", 1)
    # The API's sampler: replicas by state, fleet-wide.
    prometheus.reaches(f'sum(berth_replicas{{{sel}, state=~"ready|busy"}})', 1, "the replica gauge")


def test_the_queue_rises_while_no_replica_can_run(
    prometheus: Prometheus, stack: Stack, name: str
) -> None:
    stack.deploy(name, "probe", min_replicas=0, max_replicas=0)
    with stack.client() as c:
        for i in range(3):
            resp = c.post(
                f"/e/{name}/infer", json={"prompt": str(i)}, headers={"X-OctoAI-Async": "1"}
            )
            assert resp.status_code == 202
    prometheus.reaches(f'max(berth_queue_length{{endpoint="{name}"}})', 3, "three queued")
    # The alert rule's own expression selects this endpoint (its `for:` is minutes).
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    expr = next(
        r["expr"] for r in rules["groups"][0]["rules"] if r["alert"] == "BerthQueueWithoutReplicas"
    )
    firing = {s["metric"]["endpoint"]: float(s["value"][1]) for s in prometheus.query(expr)}
    assert firing.get(name) == 3
    wait_for(
        lambda: any(
            a["labels"].get("endpoint") == name
            and a["labels"]["alertname"] == "BerthQueueWithoutReplicas"
            for a in httpx.get(f"{prometheus.url}/api/v1/alerts", timeout=10).json()["data"][
                "alerts"
            ]
        ),
        30,
        "the alert pending",
    )


def _dashboard_queries() -> list[str]:
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "berth.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:  # label_values(metric, label), as PromQL
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"]).groups()
        exprs.append(f"group by ({label}) ({metric})")
    return exprs


def test_every_dashboard_and_alert_query_evaluates(prometheus: Prometheus, stack: Stack) -> None:
    queries = _dashboard_queries()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    queries += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(queries) > 25
    for expr in queries:
        concrete = expr.replace("$__rate_interval", "1m").replace("$endpoint", ".*")
        prometheus.query(concrete)  # asserts status success
    # Most of them find data: the metrics they name exist.
    names = set(re.findall(r"\b(berth_[a-z_]+)", " ".join(queries)))
    exported = set(
        httpx.get(f"{prometheus.url}/api/v1/label/__name__/values", timeout=10).json()["data"]
    )
    missing = {n for n in names if n not in exported and not n.endswith(("_bucket", "_count"))}
    missing -= {
        "berth_queue_rejections_total",
        "berth_callback_deliveries_total",
        "berth_replica_restarts_total",
    }
    assert not missing, f"queried but never exported: {missing}"
    promtool = shutil.which("promtool")
    if promtool:
        checked = subprocess.run(
            [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_console_charts_and_prometheus_agree(
    prometheus: Prometheus, stack: Stack, name: str
) -> None:
    """The console's queue figure and Prometheus's gauge come from the same sample."""
    stack.deploy(name, "probe", min_replicas=0, max_replicas=0)
    with stack.client() as c:
        c.post(f"/e/{name}/infer", json={"prompt": "x"}, headers={"X-OctoAI-Async": "1"})

        def charted() -> bool:
            points = c.get(f"/v1/endpoint/{name}/metrics").json()["points"]
            return bool(points) and points[-1]["queued"] == 1

        wait_for(charted, 30, "the console's point")
    prometheus.reaches(
        f'max(berth_queue_length{{endpoint="{name}"}})', 1, "the same figure in Prometheus"
    )
