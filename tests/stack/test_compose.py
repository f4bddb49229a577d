"""docker-compose.yml: valid for the docker client, and wired the way production needs."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE = REPO_ROOT / "docker-compose.yml"
# Validates a compose file against the Compose Specification's JSON schema without a Docker engine; it lies in
# the shared folder beside the checkout.
COMPOSE_CHECK = REPO_ROOT.parent / "shared" / "tools" / "compose_check.py"


def test_docker_compose_config_is_valid():
    if shutil.which("docker") is not None and \
            subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose", "-f", str(COMPOSE), "config", "-q"]
    elif COMPOSE_CHECK.is_file():
        command = [sys.executable, str(COMPOSE_CHECK), str(COMPOSE)]
    else:
        pytest.skip("neither docker compose nor the Compose Specification checker is available")
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services_are_wired_for_production():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"kafka", "postgres", "migrate", "topics", "api", "worker", "dashboard"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert services["postgres"]["image"] == "postgres:16"
    assert services["worker"]["deploy"]["replicas"] >= 2
    for name in ("api", "worker"):
        needs = services[name]["depends_on"]
        assert needs["migrate"]["condition"] == "service_completed_successfully"
        assert needs["topics"]["condition"] == "service_completed_successfully"
    for name, service in services.items():
        if "build" not in service:
            continue
        assert (REPO_ROOT / service["build"]["dockerfile"]).is_file(), name
        command = service["command"]
        module = command[command.index("-m") + 1]
        if module != "streamlit":
            assert importlib.util.find_spec(module) is not None, f"{name} runs missing module {module}"
        env = service.get("environment", {})
        if name != "stub-models":
            assert env["ROUTER_KAFKA_BOOTSTRAP"] == "kafka:9092" and "@postgres:5432/" in env["ROUTER_PG_DSN"]
    assert (REPO_ROOT / "dashboard" / "app.py").is_file()


def test_compose_restarts_services_checks_their_health_and_scrapes_metrics():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    for name in ("kafka", "postgres", "api", "worker", "stub-models", "dashboard", "prometheus"):
        assert services[name]["restart"] == "unless-stopped", name
    for name in ("migrate", "topics"):
        assert services[name]["restart"] == "no", name  # one-shot steps
    for name in ("kafka", "postgres", "api", "worker", "prometheus"):
        assert services[name]["healthcheck"]["test"], name
    assert services["worker"]["environment"]["ROUTER_WORKER_METRICS_PORT"] == "9100"
    scrape = yaml.safe_load((REPO_ROOT / "config" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert jobs["router-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["router-worker"]["dns_sd_configs"][0]["port"] == 9100
    assert "./config/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
