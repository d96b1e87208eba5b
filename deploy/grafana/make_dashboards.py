"""Write the Grafana dashboards (deploy/grafana/dashboards/*.json) from one readable spec.

The JSON files are committed (Grafana, the compose stack and the Helm chart read them); this
script is their source. Every expression uses only metrics declared in common/metrics.py
(tests/deploy/test_dashboards.py enforces it). `$__rate_interval` is Grafana's scrape-aware
rate window. Run: python deploy/grafana/make_dashboards.py
"""
from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"


def _rate(metric: str, by: str = "") -> str:
    grp = f" by ({by})" if by else ""
    return f"sum{grp} (rate({metric}[{RI}]))"


def _quantile(q: float, hist: str, by: str = "", sel: str = "") -> str:
    extra = f", {by}" if by else ""
    return f"histogram_quantile({q}, sum by (le{extra}) (rate({hist}_bucket{sel}[{RI}])))"


def _mean(hist: str, by: str = "") -> str:
    return f"{_rate(hist + '_sum', by)} / {_rate(hist + '_count', by)}"


def _mean_where(hist: str, sel: str) -> str:
    return f"sum(rate({hist}_sum{sel}[{RI}])) / sum(rate({hist}_count{sel}[{RI}]))"


class _Board:
    def __init__(self, uid: str, title: str, description: str, tags: list[str]):
        self.uid, self.title, self.description, self.tags = uid, title, description, tags
        self.panels: list[dict] = []
        self.y = 0
        self.x = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "id": len(self.panels) + 1})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x, self.row_h = 0, 0

    def _place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self._newline()
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def panel(self, kind: str, title: str, targets: list[tuple[str, str]], unit: str = "short",
              description: str = "", w: int = 8, h: int = 8, **options) -> None:
        refs = "ABCDEFGHIJ"
        p = {"id": len(self.panels) + 1, "type": kind, "title": title, "description": description,
             "datasource": DS, "gridPos": self._place(w, h),
             "targets": [{"refId": refs[i], "datasource": DS, "expr": e, "legendFormat": lg, "range": True}
                         for i, (e, lg) in enumerate(targets)],
             "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": options}
        if kind == "timeseries":
            p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                            "tooltip": {"mode": "multi"}, **options}
        if kind == "stat":
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "value", "graphMode": "area", **options}
        self.panels.append(p)

    def ts(self, title, targets, unit="short", description="", w=8, h=8):
        self.panel("timeseries", title, targets, unit, description, w, h)

    def stat(self, title, targets, unit="short", description="", w=4, h=4):
        self.panel("stat", title, targets, unit, description, w, h)

    def json(self) -> dict:
        return {
            "uid": self.uid, "title": self.title, "description": self.description, "tags": self.tags,
            "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1,
            "time": {"from": "now-1h", "to": "now"}, "refresh": "10s", "timezone": "",
            "annotations": {"list": []}, "links": [],
            "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                     "query": "prometheus", "current": {}, "hide": 0, "refresh": 1}]},
            "panels": self.panels,
        }


def training() -> dict:
    b = _Board("dyref-training", "DyRef / Training",
               "Online RL (Flow-GRPO with DRS and DAR): rewards, update statistics, staleness, throughput, "
               "queues and the services the learner depends on.", ["dyref", "training"])
    b.row("Progress")
    b.stat("Learner step", [("max(dyref_learner_step)", "step")])
    b.stat("Published policy version", [("max(dyref_learner_policy_version)", "version")])
    b.stat("Oldest version served", [("min(dyref_generator_policy_version)", "version")],
           description="Smallest policy version any generator serves.")
    b.stat("Generator version lag", [("max(dyref_learner_policy_version) - min(dyref_generator_policy_version)", "lag")],
           description="Published version minus the oldest version a generator serves.")
    b.stat("Tasks in flight", [("sum(dyref_learner_tasks_in_flight)", "tasks")])
    b.stat("Images / s", [(_rate("dyref_generator_images_total"), "images/s")], unit="none")
    b.ts("Images per second", [(_rate("dyref_generator_images_total", "generator"), "{{generator}}"),
                               (_rate("dyref_generator_images_total"), "all")], unit="none")
    b.ts("Tasks and groups per second", [(_rate("dyref_learner_tasks_admitted_total"), "tasks admitted"),
                                         (_rate("dyref_generator_groups_published_total"), "groups published"),
                                         (_rate("dyref_learner_groups_consumed_total"), "groups consumed")], unit="none")
    b.ts("Task accounting", [("sum by (outcome) (dyref_audit_tasks)", "{{outcome}}")],
         description="Every admitted task ends consumed, dropped or dead-lettered; in flight is the rest.")

    b.row("Rewards")
    b.ts("Reward mean per component", [("max by (reward) (dyref_learner_reward_mean)", "{{reward}}")], unit="none",
         description="Raw reward of the last step's groups, per component (before DRS and normalisation).")
    b.ts("Reward std per component", [("max by (reward) (dyref_learner_reward_std)", "{{reward}}")], unit="none")
    b.ts("Reward by reference count", [("max by (reward, n_refs) (dyref_learner_reward_by_nrefs)", "{{reward}} · {{n_refs}} refs")],
         unit="none", description="Mean raw reward of the last step split by the number of references.")
    b.ts("Zero-std groups", [("max(dyref_learner_zero_std_group_fraction)", "fraction")], unit="percentunit",
         description="Groups whose combined reward has zero std give no GRPO signal.")

    b.row("Held-out evaluation")
    b.ts("Held-out placement by reference count", [('max by (n_refs) (dyref_eval_score{metric="placement"})', "{{n_refs}} refs")],
         unit="none", description="The evaluator scores a fixed held-out split every rl.eval_every published versions: "
                                  "colour in the right slot and not copied elsewhere (docs/learning.md).")
    b.ts("Held-out per-reference similarity", [('max by (n_refs) (dyref_eval_score{metric="reference_similarity"})', "{{n_refs}} refs")],
         unit="none", description="Mean raw per-reference score s_j of the held-out images (1 = every reference in place).")
    b.ts("Held-out background error", [('max by (n_refs) (dyref_eval_score{metric="background_error"})', "{{n_refs}} refs"),
                                       ("max(dyref_eval_policy_version)", "evaluated version")], unit="none",
         description="Mean absolute error outside the subjects' slots (lower is better), and the version scored.")

    b.row("Policy update")
    b.ts("Advantage", [("max by (stat) (dyref_learner_advantage)", "{{stat}}")], unit="none")
    b.ts("DAR group weight", [("max by (stat) (dyref_learner_dar_weight)", "{{stat}}")], unit="none",
         description="Difficulty-aware weights w_g = (1 - p̄_g)^γ, normalised to mean 1 and clipped.")
    b.ts("KL penalty", [("max(dyref_learner_kl)", "kl")], unit="none")
    b.ts("Clip fraction", [("max by (side) (dyref_learner_clip_fraction)", "{{side}}")], unit="percentunit")
    b.ts("Importance ratio", [("max by (stat) (dyref_learner_ratio)", "{{stat}}")], unit="none")
    b.ts("Loss terms", [("max by (term) (dyref_learner_loss)", "{{term}}")], unit="none")

    b.row("Staleness and weight sync")
    b.ts("Group version lag", [(_quantile(0.5, "dyref_learner_group_version_lag"), "p50"),
                               (_quantile(0.9, "dyref_learner_group_version_lag"), "p90"),
                               (_mean("dyref_learner_group_version_lag"), "mean")], unit="none",
         description="Policy versions between a group's sampling and its use.")
    b.ts("Dropped and duplicate groups", [(_rate("dyref_learner_groups_dropped_total", "reason"), "dropped: {{reason}}"),
                                          (_rate("dyref_learner_groups_duplicate_total"), "duplicate")], unit="none")
    b.ts("Weight-sync latency", [(_quantile(0.5, "dyref_weight_sync_seconds"), "p50"),
                                 (_quantile(0.95, "dyref_weight_sync_seconds"), "p95")], unit="s",
         description="From publish to loaded, as seen by each consumer.")
    b.ts("Policy version served", [("max by (generator) (dyref_generator_policy_version)", "{{generator}}"),
                                   ("max(dyref_learner_policy_version)", "published")], unit="none")
    b.ts("Weight loads refused", [(_rate("dyref_weight_load_failures_total", "consumer, reason"), "{{consumer}} {{reason}}")],
         unit="none")

    b.row("Time per phase")
    b.ts("Seconds per phase", [(_mean("dyref_phase_seconds", "service, phase"), "{{service}} {{phase}}")], unit="s", w=12)
    b.ts("Phase p95", [(_quantile(0.95, "dyref_phase_seconds", "service, phase"), "{{service}} {{phase}}")], unit="s", w=12)

    b.row("Trainer workers")
    b.ts("Seconds per call, by trainer worker", [(_mean("dyref_learner_worker_seconds", "worker, call"), "worker {{worker}} {{call}}")],
         unit="s", w=12, description="update: a worker's shard of one learner step (uneven workers wait for the slowest); "
                                     "state: gathering the weights to publish (the learner-side part of a weight sync); "
                                     "save/load: its checkpoint shard (docs/architecture.md, The learner).")
    b.ts("Trainer restarts and weight sync", [(_rate("dyref_learner_trainer_restarts_total"), "trainer group restarts"),
                                              (_mean_where("dyref_phase_seconds", '{service="learner", phase="publish"}'), "publish s"),
                                              (_quantile(0.95, "dyref_weight_sync_seconds"), "sync p95 s")],
         unit="none", w=12, description="A restart means a trainer worker died and the group resumed from the last "
                                        "checkpoint; publish is the learner's part of a sync, sync the consumers' publish-to-loaded.")

    b.row("Queues")
    b.ts("Stream depth", [("max by (stream) (dyref_queue_depth)", "{{stream}}")])
    b.ts("Pending (delivered, not acked)", [("max by (stream) (dyref_queue_pending)", "{{stream}}")])
    b.ts("Dead letters", [("max by (stream) (dyref_queue_dead_letters)", "{{stream}}")])
    b.ts("Reclaimed entries", [(_rate("dyref_queue_reclaimed_total", "stream"), "{{stream}}")], unit="none")
    b.ts("Redis reconnects", [(_rate("dyref_redis_reconnects_total", "service"), "{{service}}")], unit="none")

    b.row("Reward service")
    b.ts("Reward latency", [(_quantile(0.5, "dyref_reward_latency_seconds", "scorer"), "p50 {{scorer}}"),
                            (_quantile(0.95, "dyref_reward_latency_seconds", "scorer"), "p95 {{scorer}}")], unit="s")
    b.ts("Reward errors and missing scores", [(_rate("dyref_reward_errors_total", "scorer, reason"), "error {{scorer}} {{reason}}"),
                                              (_rate("dyref_reward_missing_total", "scorer"), "missing {{scorer}}")], unit="none")
    b.ts("Reward batch size", [(_mean("dyref_reward_batch_size", "scorer"), "{{scorer}}")], unit="none")

    b.row("Gateway")
    b.ts("Gateway latency", [(_quantile(0.5, "dyref_gateway_latency_seconds", "route"), "p50 {{route}}"),
                             (_quantile(0.95, "dyref_gateway_latency_seconds", "route"), "p95 {{route}}")], unit="s")
    b.ts("Gateway errors", [(_rate("dyref_gateway_requests_total{status=~\"5..\"}", "route, status"), "{{route}} {{status}}")],
         unit="reqps")
    b.ts("Gateway requests", [(_rate("dyref_gateway_requests_total", "route"), "{{route}}")], unit="reqps")
    return b.json()


def serving() -> dict:
    b = _Board("dyref-serving", "DyRef / Serving",
               "The HTTP gateway (POST /generate on Ray Serve): traffic, errors, latency, queue, images.",
               ["dyref", "serving"])
    b.row("Traffic")
    b.stat("Requests / s", [(_rate("dyref_gateway_requests_total"), "req/s")], unit="reqps")
    errors = _rate('dyref_gateway_requests_total{status=~"5.."}')
    b.stat("Error ratio (5xx)", [(errors + " / " + _rate("dyref_gateway_requests_total"), "5xx")],
           unit="percentunit")
    b.stat("p95 latency /generate", [(_quantile(0.95, "dyref_gateway_latency_seconds", sel='{route="/generate"}'), "p95")], unit="s")
    b.stat("Queue", [("sum(dyref_gateway_queue)", "waiting or running")])
    b.stat("Images / s", [(_rate("dyref_gateway_images_total"), "images/s")], unit="none")
    b.stat("Policy version served", [("max(dyref_generator_policy_version)", "version")])
    b.ts("Requests by route and status", [(_rate("dyref_gateway_requests_total", "route, status"), "{{route}} {{status}}")],
         unit="reqps", w=12)
    b.ts("Client and server errors", [(_rate("dyref_gateway_requests_total{status=~\"4..|5..\"}", "status"), "{{status}}")],
         unit="reqps", w=12)
    b.row("Latency")
    b.ts("Latency quantiles", [(_quantile(0.5, "dyref_gateway_latency_seconds", "route"), "p50 {{route}}"),
                               (_quantile(0.95, "dyref_gateway_latency_seconds", "route"), "p95 {{route}}"),
                               (_quantile(0.99, "dyref_gateway_latency_seconds", "route"), "p99 {{route}}")], unit="s", w=12)
    b.ts("Mean latency", [(_mean("dyref_gateway_latency_seconds", "route"), "{{route}}")], unit="s", w=12)
    b.row("Load")
    b.ts("Requests waiting or running", [("sum(dyref_gateway_queue)", "queue")], w=12)
    b.ts("Images served per second", [(_rate("dyref_gateway_images_total"), "images/s")], unit="none", w=12)
    return b.json()


def write(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, board in (("dyref-training.json", training()), ("dyref-serving.json", serving())):
        p = out / name
        p.write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n")
        paths.append(p)
    return paths


if __name__ == "__main__":
    for p in write():
        print(p)
