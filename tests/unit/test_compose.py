"""docker-compose.yml: the services a deployment needs, wired to tokenrelay's settings.

No Docker engine runs here; where Debian's docker-compose is installed the file is also
validated by it (``docker-compose config``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_services_profiles_and_settings() -> None:
    services = compose()["services"]
    assert {"redis", "worker", "worker-gpu", "rabbitmq"} <= set(services)
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        assert worker["entrypoint"] == ["tokenrelay"] and worker["command"] == ["worker"]
        assert worker["environment"]["TOKENRELAY_REDIS_URL"] == "redis://redis:6379/0"
        assert worker["environment"]["HF_HUB_OFFLINE"] == "1"
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "--appendonly" in services["redis"]["command"]


def test_docker_compose_accepts_the_file_where_installed() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        return  # nothing more to check on a machine without it; the structure is checked above
    for extra in ([], ["--profile", "gpu", "--profile", "rabbitmq"]):
        subprocess.run([tool, *extra, "config", "-q"], cwd=ROOT, check=True, capture_output=True)
