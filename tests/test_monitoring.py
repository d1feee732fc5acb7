"""docs/monitoring.md and deploy/grafana/popkit-fleet.json against the fleet's real /metrics: every
query of the dashboard names a metric the fleet exposes, and the documented prometheus.yml scrape
(bearer token from a file) reads /metrics with a metrics-scope machine token."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from fleet.api.app import create_app
from fleet.auth.testing import ops_client
from fleet.store import Store
from kits.manifest import load_manifest
from tests.conftest import DEMO_KIT, REPO

DASHBOARD = REPO / "deploy" / "grafana" / "popkit-fleet.json"
METRIC = re.compile(r"\bpopkit_[a-z0-9_]+")


@pytest.fixture
def api(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'mon.db'}")
    store.registry.register_kit(load_manifest(DEMO_KIT))
    yield ops_client(create_app(store))
    store.close()


def exposed(api) -> set[str]:
    text = api.get("/metrics").text
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def exprs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr":
                yield v
            else:
                yield from exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from exprs(v)


def test_every_dashboard_query_names_metrics_the_fleet_exposes(api):
    names = exposed(api)
    queries = list(exprs(json.loads(DASHBOARD.read_text())))
    assert len(queries) >= 5
    used = set()
    for q in queries:
        found = set(METRIC.findall(q))
        assert found, f"{q!r} names no popkit metric"
        assert found <= names, f"{q!r}: {sorted(found - names)} not in /metrics"
        used |= found
    # What the issue asks the dashboard to show.
    assert {"popkit_messages_ingested_total", "popkit_messages_rejected_total", "popkit_devices_online",
            "popkit_alerts_open", "popkit_notifications_failed_total"} <= used


def test_the_documented_scrape_config_reads_metrics_with_a_metrics_token(api, tmp_path):
    text = (REPO / "docs" / "monitoring.md").read_text()
    [snippet] = re.findall(r"```yaml\n(.*?)```", text, re.S)
    [job] = yaml.safe_load(snippet)["scrape_configs"]
    auth = job["authorization"]
    assert auth["type"] == "Bearer" and job["metrics_path"] == "/metrics"
    made = api.post("/api/v1/machine-tokens", json={"name": "prometheus", "scope": "metrics"}).json()
    token_file = tmp_path / "popkit-fleet.token"
    token_file.write_text(made["token"] + "\n")
    # As Prometheus does: the file's content, trimmed, as the bearer credentials.
    headers = {"Authorization": f"{auth['type']} {token_file.read_text().strip()}"}
    r = api.get(job["metrics_path"], headers=headers)
    assert r.status_code == 200 and "popkit_devices 5" in r.text
    api.post(f"/api/v1/machine-tokens/{made['id']}/revoke")
    assert api.get(job["metrics_path"], headers=headers).status_code == 401
