"""docker-compose.yml: the services a deployment needs, wired to tokenrelay's settings.

No Docker engine runs here; where Debian's docker-compose is installed the file is also
validated by it (``docker-compose config``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import settings
from schemas.cluster_url import parse_cluster_url

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_services_profiles_and_settings() -> None:
    services = compose()["services"]
    assert {"redis", "worker", "worker-gpu", "rabbitmq"} <= set(services)
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["rabbitmq"]["profiles"] == ["rabbitmq", "cluster"]
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        assert worker["entrypoint"] == ["tokenrelay"] and worker["command"][0] == "worker"
        assert worker["environment"]["TOKENRELAY_REDIS_URL"] == "redis://redis:6379/0"
        assert worker["environment"]["HF_HUB_OFFLINE"] == "1"
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker-gpu"]["environment"]["TOKENRELAY_ENGINE"] == "vllm"
    assert services["worker-gpu"]["build"]["args"]["EXTRAS"] == "vllm"
    assert "TOKENRELAY_ENGINE" not in services["worker"]["environment"]
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "--appendonly" in services["redis"]["command"]


def test_docker_compose_accepts_the_file_where_installed() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        return  # nothing more to check on a machine without it; the structure is checked above
    for extra in ([], ["--profile", "gpu", "--profile", "rabbitmq"], ["--profile", "cluster"]):
        subprocess.run([tool, *extra, "config", "-q"], cwd=ROOT, check=True, capture_output=True)


READY_FILE = "/tmp/tokenrelay-ready"
HEALTH_TEST = ["python", "-m", "cli.healthcheck", READY_FILE]


def test_workers_have_a_healthcheck_on_their_ready_file() -> None:
    services = compose()["services"]
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        assert worker["command"] == ["worker", "--ready-file", READY_FILE]
        health = worker["healthcheck"]
        assert health["test"] == ["CMD", *HEALTH_TEST]
        assert health["start_period"] and health["interval"] and health["retries"] >= 1
    assert (ROOT / "cli" / "healthcheck.py").is_file()


def dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_installs_dependencies_before_the_code() -> None:
    """A code change must not reinstall torch or transformers: the layers that install them
    come before the one that copies the code."""
    lines = dockerfile()
    copy_all = next(i for i, line in enumerate(lines) if line.startswith("COPY . "))
    installs = [i for i, line in enumerate(lines) if line.startswith("RUN") and "pip install" in line]
    assert any("${TORCH_SPEC}" in lines[i] for i in installs if i < copy_all)
    assert any('".[${EXTRAS}]"' in lines[i] for i in installs if i < copy_all)
    after = [lines[i] for i in installs if i > copy_all]
    assert after and all("--no-deps" in line for line in after)
    copies_before = [line for line in lines[:copy_all] if line.startswith("COPY")]
    assert copies_before == ["COPY pyproject.toml ./"]


def test_dockerfile_healthcheck_matches_compose() -> None:
    lines = dockerfile()
    health = next(line for line in lines if line.startswith("HEALTHCHECK"))
    assert json.loads(health.split(" CMD ", 1)[1]) == HEALTH_TEST
    cmd = next(line for line in lines if line.startswith("CMD"))
    assert json.loads(cmd[len("CMD") :]) == ["worker", "--ready-file", READY_FILE]


def test_gateway_service_serves_and_has_a_healthcheck() -> None:
    gateway = compose()["services"]["gateway"]
    assert gateway["entrypoint"] == ["tokenrelay"] and gateway["command"][0] == "serve"
    assert "--host" in gateway["command"] and "0.0.0.0" in gateway["command"]
    assert gateway["environment"]["TOKENRELAY_REDIS_URL"] == "redis://redis:6379/0"
    assert "gateway" in gateway["build"]["args"]["EXTRAS"]
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    test = gateway["healthcheck"]["test"]
    assert test[0] == "CMD" and any("/healthz" in part for part in test)
    assert any(port.endswith(":8000") for port in gateway["ports"])


# -- profile "cluster": a Redis Cluster for streams, RabbitMQ as broker, scaled workers -------

NODES = [f"redis-node-{n}" for n in range(1, 7)]


def test_cluster_profile_has_six_nodes_and_a_one_shot_init() -> None:
    services = compose()["services"]
    for name in NODES:
        node = services[name]
        assert node["profiles"] == ["cluster"] and node["healthcheck"]["test"][-1] == "ping"
        args = node["command"].split()
        assert args[0] == "redis-server"
        flags = dict(zip(args[1::2], args[2::2], strict=True))
        assert flags["--cluster-enabled"] == "yes" and flags["--cluster-announce-hostname"] == name
        assert flags["--cluster-preferred-endpoint-type"] == "hostname"
        assert int(flags["--cluster-node-timeout"]) < 5000  # below the workers' default 5 s lease
        assert node["volumes"] == [f"{name}-data:/data"] and f"{name}-data" in compose()["volumes"]
    init = services["cluster-init"]
    assert init["profiles"] == ["cluster"] and init["restart"] == "no"
    assert init["depends_on"] == {name: {"condition": "service_healthy"} for name in NODES}
    script = init["command"][0]
    assert "--cluster create" in script and "--cluster-replicas 1" in script and "--cluster-yes" in script
    assert "cluster_state:ok" in script  # a restart with the data kept does not create it again
    assert "redis-node-$$n" in script and "for n in 1 2 3 4 5 6" in script


def test_cluster_profile_workers_and_gateway_use_the_cluster_and_rabbitmq(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    assert "cluster" in services["rabbitmq"]["profiles"]
    assert services["worker-cluster"]["deploy"]["replicas"] >= 2
    assert services["worker-cluster"]["command"] == ["worker", "--ready-file", READY_FILE]
    assert services["gateway-cluster"]["command"][0] == "serve"
    assert services["gateway-cluster"]["ports"] != services["gateway"]["ports"]  # both can run
    for name in ("worker-cluster", "gateway-cluster"):
        service = services[name]
        assert service["profiles"] == ["cluster"]
        env = service["environment"]
        seeds = parse_cluster_url(env["TOKENRELAY_REDIS_URL"]).seeds
        assert {host for host, _port in seeds} <= set(NODES) and len(seeds) >= 2
        assert service["depends_on"] == {
            "cluster-init": {"condition": "service_completed_successfully"},
            "rabbitmq": {"condition": "service_healthy"},
        }
        # What the services' settings resolve to: a cluster for streams, RabbitMQ as broker.
        monkeypatch.setenv("TOKENRELAY_REDIS_URL", env["TOKENRELAY_REDIS_URL"])
        monkeypatch.setenv("TOKENRELAY_BROKER_URL", env["TOKENRELAY_BROKER_URL"])
        assert settings.broker_url().startswith("amqp://rabbitmq") or "@rabbitmq:" in settings.broker_url()
        assert settings.redis_url() == env["TOKENRELAY_REDIS_URL"]
