"""Helpers for tests that run the real service and real SIPp on 127.0.0.1."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "sipp_scenarios"
HOST = "127.0.0.1"


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports are taken below the kernel's ephemeral range, so that no socket's automatic source
# port (SIPp's, Kamailio's, a service's own outgoing connections) can take one between the
# test picking it and the service binding it, and none is handed out twice in one run.
_PORT_FLOOR = 20000
_handed_out: set[int] = set()
_next_port = [0]


def free_port(host: str = HOST) -> int:
    """A port free for both UDP and TCP on ``host``, not handed out before in this run."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    top = max(_PORT_FLOOR + 1000, _ephemeral_floor())
    span = top - _PORT_FLOOR
    if not _next_port[0]:
        _next_port[0] = _PORT_FLOOR + (os.getpid() * 7919) % span
    for _ in range(span):
        port = _next_port[0]
        _next_port[0] = _PORT_FLOOR + (port + 1 - _PORT_FLOOR) % span
        if port in _handed_out:
            continue
        try:
            with socket.socket(family, socket.SOCK_STREAM) as t, \
                    socket.socket(family, socket.SOCK_DGRAM) as u:
                t.bind((host, port))
                u.bind((host, port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on {host}")


@dataclass
class Ports:
    dialer: int
    carrier: int
    carrier_next_hop: int
    dialer_next_hop: int
    admin: int

    @classmethod
    def pick(cls) -> Ports:
        picked: set[int] = set()
        values = []
        while len(values) < 5:
            p = free_port()
            if p not in picked:
                picked.add(p)
                values.append(p)
        return cls(*values)


def signing_config(tmp: Path, ports: Ports, *, numbers: str = '["+1 202 555 0100..0199"]',
                   refresh: float = 0.2, account_extra: str = "",
                   sources: str = '["127.0.0.1/32"]') -> str:
    """Config text for signing: development keys made in ``tmp``, account demo on 127.0.0.1."""
    from stirshaken_proxy.io.keys import init_dev_pki

    keys = tmp / "keys"
    if not (keys / "key.pem").exists():
        init_dev_pki(keys, spc="123A")
    return f"""
[store]
path = "{tmp / 'inventory.db'}"
refresh_interval = {refresh}

[[signing]]
name = "default"
key = "{keys / 'key.pem'}"
certificate = "{keys / 'cert.pem'}"
chain = "{keys / 'chain.pem'}"
x5u = "http://{HOST}:{ports.admin}/certs/shaken.pem"
serve_path = "/certs/shaken.pem"

[[accounts]]
name = "demo"
origid = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"
sources = {sources}
numbers = {numbers}
{account_extra}
"""


ADMIN_USER, ADMIN_PASSWORD = "admin", "test-admin-password"


def admin_password_file(folder: Path) -> Path:
    """The admin credential of a test configuration (the Trust Center and the API's
    state-changing endpoints need it)."""
    path = folder / "admin-password"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(ADMIN_PASSWORD + "\n")
    return path


def with_credential(url: str, method: str = "GET") -> urllib.request.Request:
    """A request to the admin API with the test credential (HTTP Basic)."""
    import base64

    token = base64.b64encode(f"{ADMIN_USER}:{ADMIN_PASSWORD}".encode()).decode()
    return urllib.request.Request(url, method=method,
                                  headers={"Authorization": f"Basic {token}"})


def admin_post(port: int, path: str) -> urllib.request.Request:
    """A POST to the admin API with the test credential (HTTP Basic)."""
    return with_credential(f"http://{HOST}:{port}{path}", "POST")


def run_cli(args: list[str], stdin: str = "") -> tuple[int, str, str]:
    """The CLI in this process: (exit code, standard output, standard error)."""
    import io

    from stirshaken_proxy.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    try:
        code = main(args)
    finally:
        sys.stdin, sys.stdout, sys.stderr = old
    return code, out.getvalue(), err.getvalue()


def write_config(path: Path, ports: Ports, *, extra: str = "", carrier_transport: str = "udp",
                 dialer_transport: str = "udp", dialer_sources: str = '["127.0.0.1/32"]',
                 sip: str = "", transport: str = "") -> Path:
    path.write_text(f"""
[dialer]
listen = "{HOST}:{ports.dialer}"
next_hop = "{HOST}:{ports.dialer_next_hop}"
next_hop_transport = "{dialer_transport}"
allowed_sources = {dialer_sources}

[carrier]
listen = "{HOST}:{ports.carrier}"
next_hop = "{HOST}:{ports.carrier_next_hop}"
next_hop_transport = "{carrier_transport}"
allow_any_source = true

[sip]
{sip}

[transport]
shutdown_grace = 1.0
{transport}

[admin]
listen = "{HOST}:{ports.admin}"
password_file = "{admin_password_file(path.parent)}"

[log]
level = "warning"
{extra}
""")
    return path


_OTHER_TREE = (
    "import os, runpy, sys\n"
    "sys.meta_path[:] = [f for f in sys.meta_path\n"
    "                    if not type(f).__module__.startswith('__editable__')]\n"
    "sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]\n"
    "sys.argv[0] = 'stirshaken_proxy'\n"
    "runpy.run_module('stirshaken_proxy', run_name='__main__', alter_sys=True)\n")


class Service:
    """The real service, run as a child process on a config file."""

    def __init__(self, config: Path, admin_port: int, log_path: Path, *,
                 python_path: Path | None = None) -> None:
        self.config = config
        self.admin_port = admin_port
        self.log_path = log_path
        self.python_path = python_path  # run the package found there (another tree)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self._log = open(self.log_path, "ab")
        env = None
        command = [sys.executable, "-m", "stirshaken_proxy"]
        if self.python_path is not None:
            env = {**os.environ, "PYTHONPATH": str(self.python_path)}
            # The editable install's import hook and the working directory (this checkout)
            # come ahead of PYTHONPATH: take both out so the other tree's package runs.
            command = [sys.executable, "-c", _OTHER_TREE]
        self.proc = subprocess.Popen(
            [*command, "run", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {self.log_path.read_text()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(
                        f"http://{HOST}:{self.admin_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            time.sleep(0.1)
        raise RuntimeError(f"service not ready: {self.log_path.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_service(config: Path, admin_port: int, log_path: Path) -> Iterator[Service]:
    svc = Service(config, admin_port, log_path)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def have_sipp() -> bool:
    return shutil.which("sipp") is not None


@dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    retransmissions: int
    output: str


class SippUas:
    """A SIPp UAS in the background (stops after the scenario's calls or at the time limit)."""

    def __init__(self, scenario: str, port: int, workdir: Path, *, transport: str = "u1",
                 extra: tuple[str, ...] = (), time_limit: int = 120,
                 trace_messages: bool = True) -> None:
        trace = ["-trace_msg", "-message_file", str(workdir / f"uas-{port}-msg.log")] \
            if trace_messages else []
        self.args = ["sipp", "-sf", str(SCENARIOS / scenario), "-i", HOST, "-p", str(port),
                     "-t", transport, "-nostdin", "-timeout", f"{time_limit}s",
                     "-trace_err", "-error_file", str(workdir / f"uas-{port}-err.log"),
                     *trace, *extra]
        self.workdir = workdir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SippUas:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=self.workdir)
        time.sleep(0.3)
        return self

    def messages(self) -> str:
        path = self.workdir / f"uas-{self.port}-msg.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # SIPp: stop gracefully
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def run_uac(scenario: str, target_port: int, local_port: int, workdir: Path, *, calls: int,
            rate: int, caller: str = "12025550100", callee: str = "12025550199",
            transport: str = "u1", hold_ms: int = 50, time_limit: int = 120,
            extra: tuple[str, ...] = (), target_host: str = HOST) -> SippResult:
    stat = workdir / f"uac-{local_port}-stat.csv"
    args = ["sipp", f"{target_host}:{target_port}", "-sf", str(SCENARIOS / scenario), "-i", HOST,
            "-p", str(local_port), "-t", transport, "-s", callee, "-key", "caller", caller,
            "-d", str(hold_ms), "-m", str(calls), "-r", str(rate), "-l", str(max(rate * 4, 50)),
            "-nostdin", "-timeout", f"{time_limit}s", "-timeout_error",
            "-trace_stat", "-stf", str(stat), "-fd", "1",
            "-trace_err", "-error_file", str(workdir / f"uac-{local_port}-err.log"), *extra]
    proc = subprocess.run(args, capture_output=True, cwd=workdir, timeout=time_limit + 30,
                          check=False)
    successful = failed = retrans = 0
    if stat.exists():
        with open(stat, newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
        if rows:
            last = rows[-1]
            successful = int(last["SuccessfulCall(C)"])
            failed = int(last["FailedCall(C)"])
            retrans = int(last["Retransmissions(C)"])
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    return SippResult(proc.returncode, successful, failed, retrans, out)


def scrape(port: int) -> str:
    """The admin server's /metrics text."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def env_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")


def have_kamailio() -> bool:
    return shutil.which("kamailio") is not None and KAMAILIO_MODULES.is_dir()


def wait_sip(port: int, host: str = HOST, timeout: float = 15.0) -> None:
    """Until something answers an OPTIONS (Max-Forwards 0) on host:port over UDP."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.settimeout(0.3)
        ping = (b"OPTIONS sip:%s:%d SIP/2.0\r\n"
                b"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKping\r\n"
                b"From: <sip:p@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: ping\r\n"
                b"CSeq: 1 OPTIONS\r\nMax-Forwards: 0\r\nContent-Length: 0\r\n\r\n"
                % (host.encode(), port, s.getsockname()[1]))
        while time.monotonic() < deadline:
            s.sendto(ping, (host, port))
            try:
                s.recv(4096)
                return
            except TimeoutError:
                continue
    raise RuntimeError(f"nothing answers SIP on {host}:{port}")


class Kamailio:
    """Kamailio from Debian's packages on a configuration template whose @NAME@ values are
    filled in (a file of deploy/ or bench/), in the foreground of its own session."""

    def __init__(self, template: Path, workdir: Path, values: dict[str, object],
                 ready: tuple[str, int], *, args: tuple[str, ...] = ("-m", "64", "-M", "8"),
                 name: str | None = None) -> None:
        text = template.read_text()
        for key, value in {"MODULES": KAMAILIO_MODULES, **values}.items():
            text = text.replace(f"@{key}@", str(value))
        name = name or template.name.split(".")[0]
        self.cfg = workdir / f"kamailio-{name}.cfg"
        self.cfg.write_text(text)
        self.log_path = workdir / f"kamailio-{name}.log"
        self.run_dir = workdir / f"kamailio-{name}-run"
        self.run_dir.mkdir(exist_ok=True)
        self.ready = ready
        self.args = args  # memory and allocator options
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["kamailio", "-f", str(self.cfg), "-DD", "-E", *self.args,
             "-Y", str(self.run_dir), "-w", str(self.run_dir)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_sip(self.ready[1], self.ready[0])
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"kamailio did not start: {self.log()}") from None

    def __enter__(self) -> Kamailio:
        self.start()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()
