"""Key material on disk: reading signing keys, writing development keys (private keys 0600,
never overwriting what exists)."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from ..stir.certs import load_private_key_pem, make_dev_pki


class KeyFileError(Exception):
    """Key material that cannot be read or written, phrased for the operator."""


@dataclass(frozen=True, kw_only=True)
class DevPki:
    """Paths written by ``keys init`` (and on first run for ``[[signing]] dev_spc``)."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    chain: Path

    @classmethod
    def in_dir(cls, directory: Path) -> DevPki:
        return cls(ca_cert=directory / "ca.pem", ca_key=directory / "ca-key.pem",
                   cert=directory / "cert.pem", key=directory / "key.pem",
                   chain=directory / "chain.pem")

    def files(self) -> tuple[Path, ...]:
        return (self.ca_cert, self.ca_key, self.cert, self.key, self.chain)


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Raises FileNotFoundError, OSError, or ValueError/TypeError for what is not a key."""
    try:
        return load_private_key_pem(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def init_dev_pki(directory: Path, *, spc: str, days: int = 365,
                 now: dt.datetime | None = None) -> DevPki:
    """Write a development STI-CA and a signing certificate with TNAuthList(spc) as PEM files
    into ``directory`` (created). Private keys get mode 0600. Existing files are never
    overwritten: FileExistsError names the first one. Other failures are KeyFileError, a bad
    SPC ValueError."""
    return write_dev_pki(DevPki.in_dir(directory), spc=spc, days=days, now=now)


def write_dev_pki(paths: DevPki, *, spc: str, days: int = 365,
                  now: dt.datetime | None = None) -> DevPki:
    """As init_dev_pki, at the paths given."""
    existing = [p for p in paths.files() if p.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} already exists; not overwriting key material")
    material = make_dev_pki(spc=spc, now=now or dt.datetime.now(dt.UTC), days=days)
    try:
        for folder in {p.parent for p in paths.files()}:
            folder.mkdir(parents=True, exist_ok=True)
        _write(paths.ca_key, material.ca_key, 0o600)
        _write(paths.key, material.key, 0o600)
        _write(paths.ca_cert, material.ca_cert, 0o644)
        _write(paths.cert, material.cert, 0o644)
        _write(paths.chain, material.chain, 0o644)
    except FileExistsError:
        raise
    except OSError as exc:
        where = exc.filename or paths.key.parent
        raise KeyFileError(f"cannot write development keys ({where}): "
                           f"{exc.strerror or exc}") from None
    return paths
