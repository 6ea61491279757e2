"""monitoring/: alert rules (schema always, promtool when installed), the Prometheus scrape
config, the Grafana dashboard and the compose `monitoring` profile agree with the metrics the
code exports."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.services import needs_service

ROOT = pathlib.Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
ALERTS = MONITORING / "alerts.yml"
PROMETHEUS = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "conveyor.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = needs_service(PROMTOOL is not None, "promtool not installed")

EXPORTED = {
    # API (monitoring/metrics.py)
    "conveyor_http_requests_total",
    "conveyor_http_request_duration_seconds",
    # read replicas (monitoring/metrics.py, recorded by app/db/replicas.py)
    "conveyor_replica_reads_total",
    "conveyor_replica_fallbacks_total",
    "conveyor_replica_errors_total",
    "conveyor_replica_lag_seconds",
    "conveyor_replica_lag_bytes",
    "conveyor_replica_up",
    # workers (monitoring/worker_metrics.py), served by `conveyor metrics`
    "conveyor_tasks_total",
    "conveyor_task_runtime_seconds",
    # `conveyor metrics` scrape-time gauges (app/cli/metrics.py)
    "conveyor_queue_depth",
    "conveyor_outbox_backlog",
    "conveyor_outbox_oldest_unsent_age_seconds",
    "conveyor_operations",
    "conveyor_exporter_source_up",
    "conveyor_exporter_scrape_duration_seconds",
    "conveyor_beat_leader",  # from the leader lease (scheduled work, issue 6)
}
FUTURE = {
    "conveyor_webhook_deliveries_total",  # webhooks
}
DURATION = re.compile(r"^(0|(\d+(ms|s|m|h|d|w|y))+)$")


def metric_names(text: str) -> set[str]:
    names = set(re.findall(r"\bconveyor_[a-z_]+", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    assert isinstance(data, dict) and set(data) == {"groups"}
    assert isinstance(data["groups"], list) and data["groups"]
    found: list[dict[str, Any]] = []
    for group in data["groups"]:
        assert isinstance(group.get("name"), str) and group["name"]
        assert isinstance(group.get("rules"), list) and group["rules"]
        found.extend(group["rules"])
    return found


def test_every_alert_rule_has_the_prometheus_rule_shape(rules):
    names = [r.get("alert") for r in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    allowed = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
    for rule in rules:
        name = rule.get("alert")
        assert isinstance(name, str) and re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), rule
        assert set(rule) <= allowed, f"{name}: unknown keys {set(rule) - allowed}"
        assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), name
        assert isinstance(rule.get("for"), str) and DURATION.match(rule["for"]), name
        labels = rule.get("labels")
        assert isinstance(labels, dict) and labels.get("severity") in {"critical", "warning"}, name
        assert all(isinstance(v, str) for v in labels.values()), name
        annotations = rule.get("annotations")
        assert isinstance(annotations, dict), name
        assert {"summary", "description"} <= set(annotations), name
        assert all(isinstance(v, str) and v.strip() for v in annotations.values()), name
        # Balanced brackets: the commonest hand-edit mistake in PromQL.
        expr = rule["expr"]
        for left, right in ("()", "[]", "{}"):
            assert expr.count(left) == expr.count(right), f"{name}: unbalanced {left}{right}"


def test_the_issue_alerts_exist_on_the_right_metrics(rules):
    by_name = {r["alert"]: r["expr"] for r in rules}
    assert "conveyor_queue_depth" in by_name["ConveyorQueueBacklogGrowing"]
    assert re.search(
        r"conveyor_outbox_oldest_unsent_age_seconds\s*>\s*60\b", by_name["ConveyorOutboxStale"]
    )
    assert "absent(conveyor_beat_leader)" in by_name["ConveyorNoBeatLeader"]
    assert (
        'conveyor_webhook_deliveries_total{status="dead"}'
        in by_name["ConveyorWebhookDeliveriesDead"]
    )


def test_alerts_and_dashboard_use_only_metrics_that_exist_or_are_announced(rules):
    used = metric_names(" ".join(r["expr"] for r in rules)) | metric_names(DASHBOARD.read_text())
    unknown = used - EXPORTED - FUTURE
    assert not unknown, f"no code exports {sorted(unknown)}"
    missing = (EXPORTED - {"conveyor_exporter_scrape_duration_seconds"}) - metric_names(
        DASHBOARD.read_text()
    )
    assert not missing, f"dashboard lacks panels for {sorted(missing)}"


def test_code_exports_the_metric_names_the_files_rely_on():
    from monitoring import metrics, worker_metrics

    declared = {
        metrics.HTTP_REQUESTS._name + "_total",
        metrics.HTTP_REQUEST_DURATION._name,
        metrics.REPLICA_READS._name + "_total",
        metrics.REPLICA_FALLBACKS._name + "_total",
        metrics.REPLICA_ERRORS._name + "_total",
        metrics.REPLICA_LAG._name,
        metrics.REPLICA_LAG_BYTES._name,
        metrics.REPLICA_UP._name,
        worker_metrics.TASKS._name + "_total",
        worker_metrics.TASK_RUNTIME._name,
    }
    assert declared <= EXPORTED
    source = (ROOT / "app" / "cli" / "metrics.py").read_text()
    for name in EXPORTED - declared:
        assert f'"{name}"' in source, name


def test_dashboard_panels_query_the_provisioned_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "conveyor" and dashboard["title"]
    datasource = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and metric_names(target["expr"]) | {"up"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_scrape_config_targets_the_compose_api_and_exporter():
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        name: [t for sc in job["static_configs"] for t in sc["targets"]]
        for name, job in jobs.items()
    }
    assert targets == {"conveyor-api": ["api:8000"], "conveyor-metrics": ["metrics:9808"]}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert compose["api"]["command"][-2:] == ["--port", "8000"]
    assert compose["metrics"]["command"][1:] == ["metrics", "--host", "0.0.0.0", "--port", "9808"]


def test_compose_monitoring_profile_wires_prometheus_grafana_and_worker_files():
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = data["services"]
    for name in ("prometheus", "grafana", "metrics"):
        assert services[name].get("profiles") == ["monitoring"], name
    mounts = services["prometheus"]["volumes"]
    assert "./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert any(
        m.startswith("./monitoring/grafana/conveyor.json:") for m in services["grafana"]["volumes"]
    )
    # Workers and the exporter share the directory the multiprocess files live in.
    data_dir = services["metrics"]["environment"]["CONVEYOR_DATA_DIR"]
    shared = f"worker-metrics:{data_dir}"
    assert shared in services["metrics"]["volumes"]
    workers = [n for n in services if n.startswith("worker-")]
    assert workers and all(shared in services[n].get("volumes", []) for n in workers)
    assert "worker-metrics" in data["volumes"]


@needs_promtool
def test_promtool_accepts_the_rules_and_the_scrape_config():
    rules = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = subprocess.run(
        [PROMTOOL, "check", "config", "--syntax-only", str(PROMETHEUS)],
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr


def _count(expr: str, by: str | None) -> str:
    return f"count by ({by}) ({expr})" if by else f"count({expr})"


@needs_promtool
def test_alert_expressions_fire_on_the_situations_they_describe(rules, tmp_path):
    """promtool unit test: each alert's expression on synthetic series (fires / stays quiet)."""
    exprs = {r["alert"]: r["expr"] for r in rules}

    def case(alert: str, at: str, by: str | None, fired: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "expr": _count(exprs[alert], by),
            "eval_time": at,
            "exp_samples": [{"labels": _labels(labels), "value": 1} for labels in fired],
        }

    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # Outbox: an unsent row ages past a minute on platform only.
                    {
                        "series": 'conveyor_outbox_oldest_unsent_age_seconds{domain="platform"}',
                        "values": "0 30 90 150",
                    },
                    {
                        "series": 'conveyor_outbox_oldest_unsent_age_seconds{domain="imports"}',
                        "values": "0 0 0 0",
                    },
                    # Queues: imports grows, platform is busy but steady, webhooks empty.
                    {"series": 'conveyor_queue_depth{queue="imports"}', "values": "1+10x30"},
                    {"series": 'conveyor_queue_depth{queue="platform"}', "values": "5x30"},
                    {"series": 'conveyor_queue_depth{queue="webhooks"}', "values": "0x30"},
                    # Beat: the leader goes away after 2 minutes.
                    {"series": 'conveyor_beat_leader{instance="beat-1"}', "values": "1 1 0 0 0 0"},
                    # Webhooks: one delivery dies at minute 2.
                    {
                        "series": 'conveyor_webhook_deliveries_total{status="dead"}',
                        "values": "0 0 1 1",
                    },
                    {
                        "series": 'conveyor_webhook_deliveries_total{status="delivered"}',
                        "values": "0+5x10",
                    },
                ],
                "promql_expr_test": [
                    case("ConveyorOutboxStale", "1m", "domain", []),
                    case("ConveyorOutboxStale", "2m", "domain", [{"domain": "platform"}]),
                    case("ConveyorQueueBacklogGrowing", "15m", "queue", [{"queue": "imports"}]),
                    case("ConveyorNoBeatLeader", "1m", None, []),
                    case("ConveyorNoBeatLeader", "3m", None, [{}]),
                    case("ConveyorWebhookDeliveriesDead", "1m", "status", []),
                    case("ConveyorWebhookDeliveriesDead", "3m", "status", [{"status": "dead"}]),
                ],
            },
            {
                # Nothing exports conveyor_beat_leader at all: that is an alert too.
                "interval": "1m",
                "input_series": [{"series": 'up{job="conveyor-metrics"}', "values": "1 1 1"}],
                "promql_expr_test": [case("ConveyorNoBeatLeader", "2m", None, [{}])],
            },
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


@needs_promtool
def test_replica_alert_fires_only_while_reads_keep_bypassing_the_replica(rules, tmp_path):
    expr = next(r["expr"] for r in rules if r["alert"] == "ConveyorReplicaBypassed")
    fallbacks = "conveyor_replica_fallbacks_total"
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # imports: replica down from minute 10 on; webhooks: only read-your-writes.
                    {
                        "series": f'{fallbacks}{{domain="imports",reason="unreachable"}}',
                        "values": "0x10 5+5x20",
                    },
                    {
                        "series": f'{fallbacks}{{domain="webhooks",reason="read_your_writes"}}',
                        "values": "0+3x30",
                    },
                ],
                "promql_expr_test": [
                    {"expr": f"count by (domain) ({expr})", "eval_time": "8m", "exp_samples": []},
                    {
                        "expr": f"count by (domain) ({expr})",
                        "eval_time": "20m",
                        "exp_samples": [{"labels": '{domain="imports"}', "value": 1}],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "replica_alert_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
