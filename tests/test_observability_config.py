"""The metrics wiring outside Python: compose's Prometheus and Grafana, and `agentsched dev`.

Docker is not available here, so these check what can be checked without it: every
file parses, Prometheus scrapes every API and worker of compose on their metrics port,
Grafana's provisioning points at the dashboard, and every query of the dashboard names
metrics agentsched really exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY, generate_latest

from agentsched.dev import Options, Platform, discover_apps

ROOT = Path(__file__).resolve().parent.parent
METRIC = re.compile(r"\bagentsched_[a-z_]+")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def config_file(name: str) -> Path:
    return ROOT / compose()["configs"][name]["file"]


def exported_names() -> set[str]:
    """Names of every agentsched metric family in the registry (HELP lines)."""
    text = generate_latest(REGISTRY).decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# HELP agentsched_")}


def test_prometheus_scrapes_every_api_and_worker_on_the_metrics_port() -> None:
    services = compose()["services"]
    agentsched = {
        name for name, s in services.items() if "AGENTSCHED_APP" in s.get("environment", {})
    }
    assert len(agentsched) == 10  # five APIs, five workers
    ports = {services[name]["environment"]["AGENTSCHED_METRICS_PORT"] for name in agentsched}
    assert ports == {"9100"}
    # The port listens on loopback unless told: Prometheus, in its own container, needs all.
    hosts = {services[name]["environment"].get("AGENTSCHED_METRICS_HOST") for name in agentsched}
    assert hosts == {"0.0.0.0"}
    assert all("9100" not in str(services[name].get("ports", [])) for name in agentsched)
    prometheus = services["prometheus"]
    [mount] = prometheus["configs"]
    assert mount["source"] == "prometheus-config"
    assert f"--config.file={mount['target']}" in prometheus["command"]
    scrape = yaml.safe_load(config_file("prometheus-config").read_text())
    [job] = scrape["scrape_configs"]
    [dns] = job["dns_sd_configs"]
    assert set(dns["names"]) == agentsched
    assert (dns["type"], dns["port"]) == ("A", 9100)  # A: every replica of a scaled worker


def test_grafana_provisions_the_dashboard_from_prometheus() -> None:
    services = compose()["services"]
    targets = {m["source"]: m["target"] for m in services["grafana"]["configs"]}
    sources = yaml.safe_load(config_file("grafana-datasource").read_text())["datasources"]
    [source] = sources
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    assert targets["grafana-datasource"].startswith("/etc/grafana/provisioning/datasources/")
    providers = yaml.safe_load(config_file("grafana-dashboards").read_text())["providers"]
    assert targets["grafana-dashboards"].startswith("/etc/grafana/provisioning/dashboards/")
    [provider] = providers
    assert Path(targets["grafana-dashboard"]).parent == Path(provider["options"]["path"])
    dashboard = json.loads(config_file("grafana-dashboard").read_text())
    uids = {
        target["datasource"]["uid"] for panel in dashboard["panels"] for target in panel["targets"]
    }
    assert uids == {source["uid"]}


def test_dashboard_queries_name_exported_metrics_and_cover_the_questions() -> None:
    dashboard = json.loads(config_file("grafana-dashboard").read_text())
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("throughput", "failure", "run time", "queue depth", "recorder lag", "bus"):
        assert topic in titles, topic
    names = exported_names()
    assert {"agentsched_queue_jobs", "agentsched_executions_finished_total"} <= names
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
            for name in METRIC.findall(expr):
                assert name.removesuffix("_bucket") in names, (panel["title"], name)
                used.add(name.removesuffix("_bucket"))
    # Every metric of the list is on the dashboard, but the reconciler's.
    assert names - used == {"agentsched_reconciled_total"}


def test_dev_gives_each_worker_its_own_metrics_port(tmp_path: Path) -> None:
    platform = Platform(ROOT, Options(state_dir=tmp_path))
    apps = discover_apps(ROOT, 8001)
    base = {"AGENTSCHED_LOG_CONFIG": "config/logging.yaml"}
    children = platform.plan(apps, base)
    workers = [c for c in children if c.label.endswith(".worker")]
    apis = [c for c in children if c.label.endswith(".api")]
    ports = [c.env["AGENTSCHED_METRICS_PORT"] for c in workers]
    assert len(workers) == len(apps) == len(set(ports))
    assert all("AGENTSCHED_METRICS_PORT" not in c.env for c in apis)  # APIs: /api/scheduler/metrics
