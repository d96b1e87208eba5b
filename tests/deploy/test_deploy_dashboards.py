"""Grafana dashboards and the Prometheus config: every expression parses, names only metrics
common/metrics.py exports (with the right _total/_bucket suffixes), covers what the issue asks
for, and the committed JSON is what deploy/grafana/make_dashboards.py writes."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess

import pytest
import yaml

from dyref_promql import DASHBOARD_DIR, ROOT, concrete, dashboards, exported_names, expressions, metric_names

BOARDS = dashboards()


def test_extractor_finds_metric_names_and_nothing_else():
    expr = ('histogram_quantile(0.95, sum by (le, route) (rate(dyref_gateway_latency_seconds_bucket{route="/generate"}'
            '[$__rate_interval]))) / on(job) group_left(instance) max without (pod) (up offset 5m) > bool 1e3')
    assert metric_names(expr) == {"dyref_gateway_latency_seconds_bucket", "up"}
    assert metric_names('sum(rate(a_total{x=~"b|c"}[5m])) or vector(0)') == {"a_total"}
    assert metric_names("max(dyref_learner_kl) and dyref_learner_step") == {"dyref_learner_kl", "dyref_learner_step"}


def test_exported_names_carry_prometheus_client_suffixes():
    ex = exported_names()
    assert ex["dyref_learner_groups_consumed_total"] == "counter"
    assert "dyref_learner_groups_consumed" not in ex          # a bare counter name selects nothing
    assert {"dyref_phase_seconds_bucket", "dyref_phase_seconds_sum", "dyref_phase_seconds_count"} <= set(ex)
    assert "dyref_phase_seconds" not in ex
    assert ex["dyref_learner_kl"] == "gauge"


def test_both_dashboards_exist_and_are_well_formed():
    assert set(BOARDS) == {"dyref-training.json", "dyref-serving.json"}
    uids = [b["uid"] for b in BOARDS.values()]
    assert len(set(uids)) == len(uids)
    for name, b in BOARDS.items():
        assert b["title"] and b["panels"], name
        ds = [v for v in b["templating"]["list"] if v["type"] == "datasource"]
        assert ds and ds[0]["query"] == "prometheus", name
        ids = [p["id"] for p in b["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        for p in b["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{name}: panel {p['title']!r} off the grid"
            if p["type"] != "row":
                assert p["datasource"]["uid"] == "${datasource}", f"{name}: {p['title']!r} pins a datasource"
                assert p["targets"], f"{name}: {p['title']!r} has no query"


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_every_dashboard_metric_is_exported_by_a_service(board):
    exported = exported_names()
    unknown = {}
    for title, expr in expressions(BOARDS[board]):
        names = metric_names(expr)
        assert names, f"{board}: {title!r} selects no metric: {expr}"
        missing = names - set(exported)
        if missing:
            unknown[title] = sorted(missing)
    assert not unknown, f"{board} names metrics common/metrics.py does not export: {unknown}"


def test_the_check_catches_a_wrong_name_and_a_missing_suffix():
    exported = set(exported_names())
    assert metric_names("rate(dyref_learner_groups_consumed[5m])") - exported == {"dyref_learner_groups_consumed"}
    assert metric_names("dyref_learner_no_such_thing") - exported == {"dyref_learner_no_such_thing"}


def test_training_dashboard_covers_the_issue():
    used = set().union(*(metric_names(e) for _, e in expressions(BOARDS["dyref-training.json"])))
    wanted = {
        "rewards per component": "dyref_learner_reward_mean", "per reference count": "dyref_learner_reward_by_nrefs",
        "zero-std groups": "dyref_learner_zero_std_group_fraction", "advantage": "dyref_learner_advantage",
        "DAR weight": "dyref_learner_dar_weight", "KL": "dyref_learner_kl", "clip fraction": "dyref_learner_clip_fraction",
        "policy version": "dyref_learner_policy_version", "version served": "dyref_generator_policy_version",
        "lag": "dyref_learner_group_version_lag_bucket", "dropped groups": "dyref_learner_groups_dropped_total",
        "images/s": "dyref_generator_images_total", "seconds per phase": "dyref_phase_seconds_sum",
        "weight-sync latency": "dyref_weight_sync_seconds_bucket", "queue depth": "dyref_queue_depth",
        "pending": "dyref_queue_pending", "dead letters": "dyref_queue_dead_letters",
        "reward latency": "dyref_reward_latency_seconds_bucket", "reward errors": "dyref_reward_errors_total",
        "gateway latency": "dyref_gateway_latency_seconds_bucket", "gateway errors": "dyref_gateway_requests_total",
    }
    missing = {k: v for k, v in wanted.items() if v not in used}
    assert not missing, f"training dashboard lacks: {missing}"


def test_serving_dashboard_covers_the_gateway():
    used = set().union(*(metric_names(e) for _, e in expressions(BOARDS["dyref-serving.json"])))
    assert {"dyref_gateway_requests_total", "dyref_gateway_latency_seconds_bucket", "dyref_gateway_queue",
            "dyref_gateway_images_total"} <= used


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package `prometheus`)")
def test_every_expression_parses_with_promtool(tmp_path):
    exprs = [expr for b in BOARDS.values() for _, expr in expressions(b)]
    rules = [{"record": f"dyref_check:expr_{i}", "expr": concrete(e, "1m")} for i, e in enumerate(exprs)]
    f = tmp_path / "rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_committed_dashboards_are_what_the_generator_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_dashboards", ROOT / "deploy/grafana/make_dashboards.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for p in mod.write(tmp_path):
        assert p.read_text() == (DASHBOARD_DIR / p.name).read_text(), f"{p.name} is stale: run deploy/grafana/make_dashboards.py"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package `prometheus`)")
def test_prometheus_config_is_valid():
    out = subprocess.run(["promtool", "check", "config", str(ROOT / "deploy/prometheus/prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_scrapes_every_dyref_service_and_grafana_provisioning_points_at_it():
    cfg = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    scraped = {(n, sd["port"]) for job in cfg["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    for service in ("learner", "generator", "rewards"):
        assert (service, 9100) in scraped, f"{service} metrics are not scraped"
    assert ("gateway", 8000) in scraped                     # the gateway serves /metrics on its HTTP port
    assert ("generator", 9101) in scraped                   # generator actor 0 (metrics_port + 1 + i)
    assert ("ray-head", 8080) in scraped
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/dyref.yaml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{prov['options']['path']}:ro" in mounts
