"""docker-compose.yml cannot run here (no Docker engine), so it is checked statically: valid YAML, the same
topology as `hypercheckout up`, variables that Settings accepts, and the nginx template it renders."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from hypercheckout.cluster import render_nginx_config
from hypercheckout.localservices import free_port
from hypercheckout.settings import Settings, documentation
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_ENV = SERVICES["app"]["environment"]


def expand(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_the_topology_matches_hypercheckout_up() -> None:
    assert {"postgres", "redis", "app", "nginx"} <= set(SERVICES)
    assert SERVICES["app"]["deploy"]["replicas"] == 3
    for name in ("postgres", "redis", "app", "nginx"):
        assert SERVICES[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert SERVICES["app"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert SERVICES["nginx"]["depends_on"]["app"]["condition"] == "service_healthy"


def test_every_app_variable_is_a_setting_and_parses() -> None:
    known = {env for env, _, _ in documentation()}
    assert set(APP_ENV) <= known, set(APP_ENV) - known
    assert SERVICES["migrate"]["environment"] == APP_ENV
    settings = Settings.from_env({k: expand(v) for k, v in APP_ENV.items()})
    assert settings.host == "0.0.0.0"


def test_the_app_reaches_the_services_by_their_compose_names() -> None:
    db = urlsplit(APP_ENV["HC_DATABASE_URL"])
    pg_env = SERVICES["postgres"]["environment"]
    assert db.hostname == "postgres"
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"])
    assert urlsplit(APP_ENV["HC_REDIS_URL"]).hostname == "redis"
    subnet = COMPOSE["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert APP_ENV["HC_TRUSTED_PROXIES"] == subnet  # only nginx, on that network, may set X-Real-IP


def test_nginx_is_configured_from_the_same_template_for_the_app_port() -> None:
    command = shlex.split(SERVICES["nginx-config"]["command"][-1].split(">")[0])
    assert command[:2] == ["hypercheckout", "nginx-config"]
    done = run_cli(*command[1:])
    assert done.returncode == 0, done.stderr
    assert f"server app:{APP_ENV['HC_PORT']} " in done.stdout
    assert "listen 80;" in done.stdout and "user nginx;" in done.stdout
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"HC_PORT={APP_ENV['HC_PORT']}" in dockerfile and "COPY nginx" in dockerfile


@pytest.mark.skipif(not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()), reason="nginx not installed")
def test_the_nginx_template_is_valid_nginx(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_config(listen=f"127.0.0.1:{free_port()}", upstreams=["127.0.0.1:8000"],
                                        runtime_dir=str(tmp_path), log_dir=str(tmp_path)))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    done = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "e.log")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
