"""`stirshaken-proxy credentials`: HA1 digests in the store, never the password; errors name
what is wrong."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from stirshaken_proxy.policy.digest import ha1
from tests.support import Ports, run_cli, signing_config, write_config


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    ports = Ports.pick()
    return write_config(tmp_path / "c.toml", ports,
                        extra=signing_config(tmp_path, ports) + '[digest]\nrealm = "r.test"\n')


run = run_cli


def test_set_list_remove(cfg: Path, tmp_path: Path) -> None:
    c = str(cfg)
    assert run(["credentials", "set", "--config", c, "--username", "dialer1", "--account",
                "demo"], "long-password\n")[0] == 0
    secret = tmp_path / "pw"
    secret.write_text("another-password\n")
    assert run(["credentials", "set", "--config", c, "--username", "dialer2", "--account",
                "demo", "--password-file", str(secret)])[0] == 0
    code, out, _ = run(["credentials", "list", "--config", c])
    assert code == 0 and out == "dialer1\tdemo\ndialer2\tdemo\n"
    rows = sqlite3.connect(tmp_path / "inventory.db").execute(
        "SELECT username, ha1_md5, ha1_sha256 FROM credentials ORDER BY username").fetchall()
    assert rows[0] == ("dialer1", ha1("MD5", "dialer1", "r.test", "long-password"),
                       ha1("SHA-256", "dialer1", "r.test", "long-password"))
    dump = "\n".join(sqlite3.connect(tmp_path / "inventory.db").iterdump())
    assert "long-password" not in dump and "another-password" not in dump
    assert run(["credentials", "remove", "--config", c, "--username", "dialer1"])[0] == 0
    assert run(["credentials", "list", "--config", c])[1] == "dialer2\tdemo\n"


@pytest.mark.parametrize(("args", "stdin", "error"), [
    (["--username", "d1", "--account", "nobody"], "long-password\n",
     "--account 'nobody': no such account"),
    (["--username", "d 1", "--account", "demo"], "long-password\n", "username 'd 1'"),
    (["--username", "d1", "--account", "demo"], "short\n", "at least 8 characters"),
    (["--username", "d1", "--account", "demo", "--password-file", "/nonexistent/pw"], "",
     "/nonexistent/pw: cannot read"),
])
def test_set_errors(cfg: Path, args: list[str], stdin: str, error: str) -> None:
    code, _, err = run(["credentials", "set", "--config", str(cfg), *args], stdin)
    assert code != 0 and error in err and "Traceback" not in err


def test_remove_unknown_and_no_digest_section(cfg: Path, tmp_path: Path) -> None:
    code, _, err = run(["credentials", "remove", "--config", str(cfg), "--username", "ghost"])
    assert code != 0 and "no credentials for 'ghost'" in err
    plain = tmp_path / "plain.toml"
    plain.write_text(cfg.read_text().replace('[digest]\nrealm = "r.test"\n', ""))
    code, _, err = run(["credentials", "list", "--config", str(plain)])
    assert code != 0 and "no [digest] section" in err


def test_a_brand_must_match_the_business(tmp_path: Path) -> None:
    ports = Ports.pick()
    cfg = write_config(tmp_path / "b.toml", ports, extra=signing_config(
        tmp_path, ports, account_extra='business = { legal_name = "Demo Sales Inc." }'))
    code, _, err = run(["brands", "set", "--config", str(cfg), "--account", "demo",
                        "--name", "Free Cruise Center"])
    assert code != 0 and "does not match the business ('Demo Sales Inc.')" in err
    code, out, _ = run(["brands", "set", "--config", str(cfg), "--number", "+12025550100",
                        "--name", "Demo Sales Billing"])
    assert code == 0 and "tn:12025550100" in out
    code, _, err = run(["brands", "set", "--config", str(cfg), "--number", "+13035550100",
                        "--name", "Demo Sales"])
    assert code != 0 and "not in the inventory" in err
