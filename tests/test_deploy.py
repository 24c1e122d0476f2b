"""Container and Kubernetes artifacts checked against the code (no Docker engine here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from router.cli import build_parser
from router.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
OPS_PATHS = {"/healthz", "/readyz", "/metrics"}  # served by router.sidecar.admin.handle_ops


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_dockerfile_is_slim_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all("slim" in f for f in froms)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and not users[-1].startswith("0") and users[-1] != "root"
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.M)
    assert "EXPOSE 8080" in text
    entry = re.search(r"^ENTRYPOINT (.*)$", text, re.M)
    assert entry and "router serve -c" in entry.group(1) and "--workers" in entry.group(1)
    # the command the image runs exists in our CLI
    argv = ["serve", "-c", "/etc/shadow-router/router.yaml", "--workers", "2"]
    ns = build_parser().parse_args(argv)
    assert ns.command == "serve"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored


def test_compose_services_and_router_config() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "champion", "challenger", "router"}
    assert services["router"]["ports"] == ["8080:8080"]
    cfg = parse_config(
        yaml.safe_load((ROOT / "deploy" / "docker-compose.router.yaml").read_text()), "compose"
    )
    assert cfg.listen_port == 8080
    assert cfg.capture.redis.startswith("redis://redis:")
    assert cfg.champion.host == "champion" and cfg.challenger.host == "challenger"
    for name in ("champion", "challenger"):
        entry = services[name]["entrypoint"]
        assert entry[:3] == ["python", "-m", "router.demo.models"]
        port = int(entry[entry.index("--port") + 1])
        assert port == getattr(cfg, name).port


def test_kubernetes_sidecar_matches_the_router() -> None:
    (cm,) = _docs(K8S / "configmap.yaml")
    cfg = parse_config(yaml.safe_load(cm["data"]["router.yaml"]), "configmap")
    deploy, service = _docs(K8S / "deployment.yaml")
    assert deploy["kind"] == "Deployment" and service["kind"] == "Service"
    pod = deploy["spec"]["template"]
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == cfg.listen_port
    assert ann["prometheus.io/path"] in OPS_PATHS
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    router = containers["shadow-router"]
    ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    assert ports["http"] == cfg.listen_port
    for probe in ("livenessProbe", "readinessProbe"):
        assert router[probe]["httpGet"]["path"] in OPS_PATHS
        assert router[probe]["httpGet"]["port"] == "http"
    assert router["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # the champion is the model container in the same pod
    model_port = containers["model"]["ports"][0]["containerPort"]
    assert cfg.champion.host == "127.0.0.1" and cfg.champion.port == model_port
    # tokens come from the Secret, under the env names the config reads
    (secret,) = _docs(K8S / "secret.yaml")
    env = {e["name"]: e for e in router["env"]}
    for env_name, key in ((cfg.admin.token_env, "admin-token"),
                          (cfg.admin.outcomes_token_env, "outcomes-token")):  # fmt: skip
        ref = env[env_name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and key in secret["stringData"]
    mount = {m["name"]: m["mountPath"] for m in router["volumeMounts"]}
    assert env["ROUTER_CONFIG"]["value"].startswith(mount["router-config"])
    assert deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > (
        cfg.limits.drain_timeout_s
    )
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # Redis reference: the config's capture URL points at its Service
    sts, redis_svc = _docs(K8S / "redis.yaml")
    assert sts["kind"] == "StatefulSet"
    assert f"//{redis_svc['metadata']['name']}:" in cfg.capture.redis


def _exported_names() -> set[str]:
    from router.metrics import CATALOGUE

    names: set[str] = set()
    for name, d in CATALOGUE.items():
        if d.kind == "counter":
            names.add(f"{name}_total")
        elif d.kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def test_dashboard_and_alerts_use_real_metric_names() -> None:
    import json

    exported = _exported_names()
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dash = json.loads((ROOT / "deploy" / "grafana" / "shadow-router.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\brouter_[a-z_]+", e)}
    assert used, "no metrics referenced"
    assert used <= exported, used - exported
    assert all(r.get("annotations", {}).get("summary") for g in rules["groups"] for r in g["rules"])
