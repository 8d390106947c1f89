"""docker-compose.yml: valid, no hard-coded credentials, ports on 127.0.0.1 unless told otherwise."""

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.helpers import needs

ROOT = Path(__file__).resolve().parents[1]
needs_compose = needs("docker-compose", shutil.which("docker-compose") is not None,
                      "docker-compose not installed (Debian package docker-compose)")


def config(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"], cwd=ROOT,
                          env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True)


@needs_compose
def test_compose_file_validates_and_binds_to_localhost_by_default():
    out = config({"POSTGRES_PASSWORD": "secret"})
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert set(resolved["services"]) == {"postgres", "mlflow", "dashboard", "worker"}
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            host_ip = port["host_ip"] if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)
    devices = resolved["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert config({"POSTGRES_PASSWORD": "s", "BIND_ADDRESS": "0.0.0.0"}).stdout.count("0.0.0.0") >= 3


@needs_compose
def test_compose_refuses_to_start_without_a_password():
    out = config({})
    assert out.returncode != 0 and "POSTGRES_PASSWORD" in out.stderr


def test_no_credentials_are_hard_coded():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text and "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text
