"""The monitoring files in deploy/ against the code: every metric a dashboard panel or an alert
queries is one the workers export, and the files are what Grafana and Prometheus read.

``promtool`` checks the Prometheus files as Prometheus itself parses them (Debian's ``prometheus``
package ships it; the Makefile puts it in ``~/.cache/streamer/prometheus``). Debian builds
Prometheus without Kubernetes discovery, so the configuration is checked with its Kubernetes job's
discovery swapped for a static target: everything else, relabelling included, as written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.ops.metrics import Metrics
from streamer.settings import MetricsSettings

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS = ROOT / "deploy" / "prometheus"
PROMTOOL = Path.home() / ".cache" / "streamer" / "prometheus" / "promtool"

#: series Prometheus makes itself, not the workers
BUILTIN = {"up"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
_KEYWORDS |= {"bool", "offset"}


def exported() -> set[str]:
    """The series names a worker's registry exports (labelled metrics included before their
    first sample)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {f.name + s for f in Metrics().registry.collect() for s in suffixes[f.type]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not function calls,
    keywords, label names, strings, ranges or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if not m.group(2) and m.group(1) not in _KEYWORDS:
            names.add(m.group(1))
    return names


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, op) (rate(streamer_redis_seconds_bucket{op="read",'
        ' instance=~"$instance"}[$__rate_interval]))) > 1e3'
    )
    assert metric_names(expr) == {"streamer_redis_seconds_bucket"}
    expr = "a / ignoring (reason) group_left sum(b) and on(x) c offset 5m or deriv(sum(d)[15m:1m])"
    assert metric_names(expr) == {"a", "b", "c", "d"}
    assert "streamer_events_total" in exported() and "streamer_latency_seconds_bucket" in exported()
    assert "streamer_dead_letters_total" in exported()  # labelled, no sample yet


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((GRAFANA / "streamer.json").read_text())
    return doc


def all_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for p in doc["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs(doc: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in all_panels(doc) for t in p.get("targets", [])]


def test_dashboard_panels_are_laid_out_once_each() -> None:
    doc = dashboard()
    assert 36 <= doc["schemaVersion"] <= 41 and doc["uid"] == "streamer"
    panels = all_panels(doc)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    taken: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(g) and g["h"] > 0 and g["w"] > 0, p["title"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for cell in (
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        ):
            assert cell not in taken, f"{p['title']} overlaps panel {taken[cell]}"
            taken[cell] = p["id"]
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]


def test_dashboard_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query" and instance["includeAll"] and instance["multi"]
    m = re.fullmatch(r"label_values\((\w+), *instance\)", instance["definition"])
    assert m and m.group(1) in exported(), instance["definition"]


def test_dashboard_queries_only_exported_metrics_and_shows_them_all() -> None:
    names = exported()
    used: set[str] = set()
    for expr in dashboard_exprs(dashboard()):
        found = metric_names(expr)
        assert found, expr
        assert found <= names, f"not exported by streamer.ops.metrics: {found - names} in {expr}"
        assert '{instance=~"$instance"}' in expr, f"not filtered by the worker variable: {expr}"
        used |= found
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in names}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert families <= shown, f"metrics without a panel: {sorted(families - shown)}"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_prometheus_scrapes_the_workers_metrics_endpoint() -> None:
    cfg = load_yaml(PROMETHEUS / "prometheus.yml")
    assert cfg["rule_files"] == ["alerts.yml"] and (PROMETHEUS / "alerts.yml").is_file()
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"streamer", "streamer-kubernetes"}  # the alerts select job=~"streamer.*"
    assert all(j["metrics_path"] == "/metrics" for j in jobs.values())
    port = MetricsSettings().port
    assert [t.rsplit(":", 1)[1] for t in jobs["streamer"]["static_configs"][0]["targets"]] == [
        str(port)
    ]
    k8s = jobs["streamer-kubernetes"]
    assert k8s["kubernetes_sd_configs"] == [{"role": "pod"}]
    relabel = {tuple(r.get("source_labels", ())): r for r in k8s["relabel_configs"]}
    keep = relabel[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]
    assert keep["action"] == "keep" and keep["regex"] == "true"
    address = relabel[("__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port")]
    assert address["target_label"] == "__address__"
    assert re.fullmatch(address["regex"], "10.0.0.7:8080;9108")  # the pod's IP, the annotated port


def test_alert_rules_query_exported_metrics() -> None:
    doc = load_yaml(PROMETHEUS / "alerts.yml")
    rules = [r for g in doc["groups"] for r in g["rules"]]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) >= 8
    for r in rules:
        found = metric_names(r["expr"])
        assert found and found <= exported() | BUILTIN, f"{r['alert']}: {found - exported()}"
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_grafana_provisioning() -> None:
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert [d["type"] for d in ds["datasources"]] == ["prometheus"]
    assert ds["datasources"][0]["isDefault"]  # the dashboard's DS_PROMETHEUS picks it
    boards = load_yaml(GRAFANA / "provisioning" / "dashboards" / "streamer.yml")
    (provider,) = boards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if found is None and PROMTOOL.is_file():
        found = str(PROMTOOL)
    if found is None:
        pytest.fail(
            f"promtool not found: set PROMTOOL, put it on PATH or in {PROMTOOL} (the Makefile "
            "extracts it from Debian's prometheus package)",
            pytrace=False,
        )
    return found


def check(what: str, path: Path) -> str:
    """``promtool check WHAT PATH``, which must pass; its output."""
    r = subprocess.run(
        [promtool(), "check", what, str(path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def test_promtool_accepts_the_rules_and_the_configuration(tmp_path: Path) -> None:
    check("rules", PROMETHEUS / "alerts.yml")
    cfg = load_yaml(PROMETHEUS / "prometheus.yml")
    for job in cfg["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:  # not built into Debian's promtool
            job["static_configs"] = [{"targets": ["10.0.0.7:8080"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    assert "SUCCESS: 1 rule files found" in check("config", tmp_path / "prometheus.yml")


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """The panels' PromQL, with Grafana's variables as Grafana substitutes them, written as
    recording rules: promtool parses each one as Prometheus would."""
    exprs = [
        e.replace("$__rate_interval", "1m").replace("$instance", ".*")
        for e in dashboard_exprs(dashboard())
    ]
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    assert f"SUCCESS: {len(exprs)} rules found" in check("rules", tmp_path / "queries.yml")


def test_promtool_accepts_the_compose_configuration() -> None:
    """deploy/prometheus/compose.yml (Prometheus inside deploy/compose.yaml) as it is."""
    assert "SUCCESS: 1 rule files found" in check("config", PROMETHEUS / "compose.yml")
