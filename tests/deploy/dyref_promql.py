"""Helpers shared by the deploy tests: dashboard expressions, the metric names they use, and
the sample names common/metrics.py exports (with the _total/_bucket/_sum/_count suffixes)."""
from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["ROOT", "DASHBOARD_DIR", "dashboards", "expressions", "metric_names", "exported_names", "concrete"]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"

# words that look like identifiers in PromQL but are not metric names
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "Inf", "NaN", "start", "end"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?")


def dashboards() -> dict[str, dict]:
    """file name -> parsed dashboard JSON."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def _panels(panels: list[dict]):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def expressions(board: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query target of a dashboard."""
    return [(p.get("title", ""), t["expr"]) for p in _panels(board.get("panels", []))
            for t in p.get("targets", []) if t.get("expr")]


def metric_names(expr: str) -> set[str]:
    """Metric (sample) names an expression selects: identifiers that are not functions,
    aggregations, keywords, label names (matchers, by/without/on lists) or Grafana variables."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)          # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)         # range / subquery windows
    s = _GROUPING.sub(" ", s)                 # label lists
    s = re.sub(r"\$\{?\w+\}?", " ", s)        # Grafana variables ($__rate_interval, ${datasource})
    names = set()
    for m in _IDENT.finditer(s):
        name, call = m.group(1), m.group(2)
        if call or name in _KEYWORDS:
            continue
        names.add(name)
    return names


def exported_names() -> dict[str, str]:
    """Every sample name the metrics declared in common/metrics.py put on /metrics -> its type.
    prometheus_client exports counters as <name>_total (+ _created), histograms as
    <name>_bucket/_sum/_count (+ _created); a bare counter or histogram name selects nothing."""
    from prometheus_client.metrics import MetricWrapperBase

    import common.metrics as M
    out: dict[str, str] = {}
    for attr in M.__all__:
        metric = getattr(M, attr)
        if not isinstance(metric, MetricWrapperBase):
            continue
        for family in metric.describe():
            n, t = family.name, family.type
            suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created"),
                        "summary": ("", "_sum", "_count", "_created"), "info": ("_info",), "stateset": ("",), "enum": ("",)}[t]
            for s in suffixes:
                out[n + s] = t
    return out


def concrete(expr: str, window: str) -> str:
    """A dashboard expression as Prometheus itself accepts it (Grafana's variables filled in)."""
    return expr.replace("$__rate_interval", window).replace("$__interval", window).replace("${__rate_interval}", window)
