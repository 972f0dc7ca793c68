"""schemas.settings: every environment variable validated in one place, errors naming it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.main import build_parser, main
from schemas import ValidationError, settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in settings.ENVIRONMENT:
        monkeypatch.delenv(var.name, raising=False)


def test_defaults() -> None:
    assert settings.redis_url() == settings.DEFAULT_REDIS_URL
    assert settings.broker_url() == settings.DEFAULT_REDIS_URL
    assert settings.ttl_s() == 3600 and settings.visibility_timeout_s() == 300
    assert settings.lease_s() == 5.0 and settings.grace_s() == 30.0 and settings.max_attempts() == 3
    assert settings.device() is None and settings.torch_threads() is None
    assert settings.api_keys() == [] and settings.task_events() is False
    assert settings.redis_max_connections() == 4096
    assert settings.dtype() == "auto"
    settings.validate_environment()


def test_explicit_argument_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_LEASE_S", "2.5")
    monkeypatch.setenv("TOKENRELAY_TORCH_THREADS", "4")
    assert settings.lease_s() == 2.5 and settings.lease_s(1.0) == 1.0
    assert settings.torch_threads() == 4 and settings.torch_threads(2) == 2
    monkeypatch.setenv("TOKENRELAY_DTYPE", "bfloat16")
    assert settings.dtype() == "bfloat16" and settings.dtype("float32") == "float32"


def test_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # docker-compose writes `${TOKENRELAY_BROKER_URL:-}` as an empty string
    monkeypatch.setenv("TOKENRELAY_BROKER_URL", "")
    monkeypatch.setenv("TOKENRELAY_REDIS_URL", "redis://r:6379/1")
    assert settings.broker_url() == "redis://r:6379/1"


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOKENRELAY_BROKER_URL", "amqp://guest:guest@rabbit:5672//")
    monkeypatch.setenv("TOKENRELAY_DEVICE", "cuda:1")
    monkeypatch.setenv("TOKENRELAY_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("TOKENRELAY_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TOKENRELAY_API_KEYS", " k1, k2 ")
    monkeypatch.setenv("TOKENRELAY_TASK_EVENTS", "yes")
    assert settings.broker_url().startswith("amqp://")
    assert settings.device() == "cuda:1" and settings.max_attempts() == 5
    assert settings.cache_dir() == tmp_path
    assert settings.api_keys() == ["k1", "k2"] and settings.task_events()


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert settings.cache_dir() == tmp_path / "tokenrelay"


BAD = [
    ("TOKENRELAY_REDIS_URL", "localhost:6379", settings.redis_url),
    ("TOKENRELAY_BROKER_URL", "kafka://x", settings.broker_url),
    ("TOKENRELAY_TTL_S", "1h", settings.ttl_s),
    ("TOKENRELAY_TTL_S", "0", settings.ttl_s),
    ("TOKENRELAY_VISIBILITY_TIMEOUT_S", "1h", settings.visibility_timeout_s),
    ("TOKENRELAY_LEASE_S", "nan", settings.lease_s),
    ("TOKENRELAY_LEASE_S", "0", settings.lease_s),
    ("TOKENRELAY_GRACE_S", "-1", settings.grace_s),
    ("TOKENRELAY_MAX_ATTEMPTS", "2.5", settings.max_attempts),
    ("TOKENRELAY_DEVICE", "tpu", settings.device),
    ("TOKENRELAY_TORCH_THREADS", "many", settings.torch_threads),
    ("TOKENRELAY_DTYPE", "bf16", settings.dtype),
    ("TOKENRELAY_TASK_EVENTS", "maybe", settings.task_events),
    ("TOKENRELAY_METRICS_PORT", "http", settings.metrics_port),
    ("TOKENRELAY_METRICS_PORT", "-1", settings.metrics_port),
    ("TOKENRELAY_API_KEYS", " , ", settings.api_keys),
    ("TOKENRELAY_API_KEYS", "a,,b", settings.api_keys),
]


@pytest.mark.parametrize(("name", "value", "read"), BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, read: Callable[[], object]
) -> None:
    monkeypatch.setenv(name, value)
    for call in (read, settings.validate_environment):
        with pytest.raises(ValidationError) as info:
            call()
        assert info.value.field == name and name in str(info.value)


def test_bad_argument_names_the_argument() -> None:
    with pytest.raises(ValidationError) as info:
        settings.ttl_s(0)
    assert info.value.field == "ttl_s"
    with pytest.raises(ValidationError) as info:
        settings.redis_url("http://x")
    assert info.value.field == "redis_url"


def test_cache_dir_that_is_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("TOKENRELAY_CACHE_DIR", str(tmp_path / "f"))
    with pytest.raises(ValidationError, match="TOKENRELAY_CACHE_DIR"):
        settings.cache_dir()


def test_any_command_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TOKENRELAY_DEVICE", "tpu")
    assert main(["cancel", "some-id"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TOKENRELAY_DEVICE" in err and "Traceback" not in err


def test_help_and_readme_list_every_variable() -> None:
    helptext = build_parser().format_help()
    readme = (ROOT / "README.md").read_text()
    for var in settings.ENVIRONMENT:
        assert var.name in helptext
        assert f"`{var.name}`" in readme, f"README's Configuration table lacks {var.name}"


def test_settings_is_the_only_reader_of_tokenrelay_variables() -> None:
    """Nothing outside schemas/settings.py reads a TOKENRELAY_* variable ad hoc."""
    pattern = re.compile(r"(os\.environ(\.get)?[\[(]|os\.getenv\()\s*[\"']TOKENRELAY_")
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("schemas", "producer", "consumer", "workers", "broker", "cli", "gateway")
        for path in (ROOT / package).rglob("*.py")
        if path.name != "settings.py" and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_version_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "cli", "--version"], capture_output=True, text=True, check=True)
    assert re.fullmatch(r"tokenrelay \d+\.\d+\.\d+.*\n", out.stdout)
