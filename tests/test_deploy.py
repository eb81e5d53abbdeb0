"""The Docker image and the compose stack, checked without a Docker engine (there is none on
this machine): files parse, everything they reference exists, every address is loopback, and
the image's entry command works when run directly."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from tests.support import HOST, Ports, write_config

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_references_what_exists() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"proxy", "carrier", "dialer", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        assert svc.get("network_mode") == "host", name  # binds 127.0.0.1 only, see the file
        if "build" in svc:
            assert (ROOT / svc["build"] / "Dockerfile").is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)
        for arg in map(str, svc.get("command", [])):
            for ip in re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", arg):
                assert ipaddress.ip_address(ip).is_loopback, (name, ip)


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(?:--chown=\S+ )?(.+) \S+$", text,
                             re.MULTILINE):
        for item in source.split():
            assert (ROOT / item).exists(), item
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert os.access(ROOT / "deploy/docker-entrypoint.sh", os.X_OK)
    # Files the example config reads at start, by paths relative to the WORKDIR, are there.
    workdir = re.findall(r"^WORKDIR (\S+)", text, re.MULTILINE)[-1]
    copied = {dest for _, dest in re.findall(r"^COPY (?:--chown=\S+ )?(\S+) (\S+)$", text,
                                              re.MULTILINE)}
    assert f"{workdir}/config/dev-admin-password" in copied


def test_prometheus_and_grafana_provisioning() -> None:
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for rule_file in prom["rule_files"]:
        assert (ROOT / "deploy/prometheus" / Path(rule_file).name).is_file()
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["127.0.0.1:8080"]
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/stirshaken.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]


def test_entrypoint_runs_the_service(tmp_path: Path) -> None:
    """What the container runs, run directly: dev keys on first start, then the service."""
    ports = Ports.pick()
    extra = """
[[signing]]
key = "var/keys/key.pem"
chain = "var/keys/chain.pem"
x5u = "http://127.0.0.1/certs/shaken.pem"

[[accounts]]
name = "demo"
origid = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"
sources = ["127.0.0.1/32"]

[store]
path = "var/stirshaken.db"
"""
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=extra)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.Popen([str(ROOT / "deploy/docker-entrypoint.sh"), "run", "--config",
                             str(cfg)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        ready = False
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://{HOST}:{ports.admin}/readyz", timeout=1):
                    ready = True
                    break
            except OSError:
                time.sleep(0.1)
        assert ready, proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
        assert (tmp_path / "var/keys/key.pem").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "var/stirshaken.db").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_ha_profile_parts(tmp_path: Path) -> None:
    """The compose stack's "ha" profile: its configurations load, and the dispatcher's
    configuration filled in by its entrypoint passes Kamailio's own check (which a broken
    one fails)."""
    import shutil

    from stirshaken_proxy.config import load_config

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ha = {n for n, s in compose["services"].items() if "ha" in s.get("profiles", [])}
    assert ha == {"postgres", "redis", "proxy-a", "proxy-b", "dispatcher", "dialer-ha"}
    listen = []
    for name in ("proxy-a", "proxy-b"):
        source = compose["services"][name]["volumes"][0].split(":")[0]
        text = (ROOT / source).read_text().replace('"var/', f'"{tmp_path}/{name}/')
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(text)
        config = load_config(cfg)
        assert config.auth is not None and config.auth.store_url.startswith("postgresql://")
        assert config.auth.health_redis == "redis://127.0.0.1:6379/0"
        listen.append(f"{config.engine.dialer.host}:{config.engine.dialer.port}")
    env = compose["services"]["dispatcher"]["environment"]
    assert env["INSTANCES"].split() == listen
    if shutil.which("kamailio") is None:
        return
    entry = ROOT / "deploy/kamailio/dispatcher-entrypoint.sh"
    assert os.access(entry, os.X_OK)
    run_env = {**os.environ, "INSTANCES": env["INSTANCES"], "OUT": str(tmp_path / "k"),
               "TEMPLATE": str(ROOT / "deploy/kamailio/dispatcher.cfg")}
    ok = subprocess.run([str(entry), "--check"], env=run_env, capture_output=True, text=True,
                        timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "k/dispatcher.list").read_text() == "".join(
        f"1 sip:{a}\n" for a in listen)
    broken = tmp_path / "broken.cfg"
    broken.write_text((ROOT / "deploy/kamailio/dispatcher.cfg").read_text()
                      .replace("t_relay();\n    exit;\n}", "t_relay(\n}", 1))
    bad = subprocess.run([str(entry), "--check"], env={**run_env, "TEMPLATE": str(broken)},
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0
