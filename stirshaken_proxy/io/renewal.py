"""Renewal of the ACME signing certificates in the running service (worker 0).

Each identity with ``acme = true`` is renewed once ``renew_before`` of its certificate's
lifetime is left; a failure is counted, logged and retried after ``retry_interval``, while the
running certificate keeps signing. A certificate installed by anyone (this task, ``certs
renew``, an operator) is picked up by a reload, which checks it like any configuration: until
that reload succeeds, the old certificate is the one in use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from ..config import AcmeConfig, Config, SigningConfig
from ..stir.acme import renewal_time
from ..stir.credentials import load_pem_chain
from .acme import CertificateRequestError, Obtained, obtain

log = logging.getLogger(__name__)
FILE_CHECK_INTERVAL = 60.0


def installed_serial(identity: SigningConfig) -> str | None:
    """The serial of the certificate in the identity's chain file now (None: unreadable)."""
    path = identity.chain or identity.certificate
    if path is None:
        return None
    try:
        return f"{load_pem_chain(path.read_bytes())[0].serial_number:x}"
    except (OSError, ValueError):
        return None


class Renewer:
    """Owned by the application: ``run`` until cancelled."""

    def __init__(self, config: Config, *, reload: Callable[[], None],
                 obtain_certificate: Callable[[SigningConfig, AcmeConfig],
                                              Awaitable[Obtained]] = obtain,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.reload = reload
        self.obtain = obtain_certificate
        self.clock = clock
        self.renewals: Counter[str] = Counter()  # identity -> certificates got
        self.failures: Counter[str] = Counter()  # identity -> failed attempts
        self.last_error: dict[str, str] = {}
        self._retry_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._reloading = False  # a reload was asked for and has not answered yet

    def identities(self) -> list[SigningConfig]:
        auth = self.config.auth
        return [s for s in (auth.signing if auth else ()) if s.acme]

    def next_renewal(self, identity: SigningConfig) -> float:
        """When the identity is due (now for one without a certificate), retries included."""
        assert self.config.acme is not None
        info = identity.cert_info
        due = (renewal_time(info.not_before, info.not_after, self.config.acme.renew_before)
               if info is not None else 0.0)
        return max(due, self._retry_at.get(identity.name, 0.0))

    def configured(self, config: Config | None) -> None:
        """What a reload did: the configuration it put in place (its certificates are the
        running ones), or None when it was refused (the running ones stay)."""
        if config is not None:
            self.config = config
        self._reloading = False
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self.tick()
            acme = self.config.acme
            if acme is None:
                return
            now = self.clock()
            # Certificates installed by ``certs renew`` are looked for at least every minute.
            wait = min(acme.check_interval, FILE_CHECK_INTERVAL) if self._reloading else min(
                [acme.check_interval, FILE_CHECK_INTERVAL] +
                [max(0.0, self.next_renewal(s) - now) for s in self.identities()])
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.05))
            except TimeoutError:
                pass

    async def tick(self) -> None:
        """Renew what is due; reload when a certificate on disk is not the running one."""
        acme = self.config.acme
        if acme is None or self._reloading:
            return
        changed = False
        for identity in self.identities():
            running = identity.cert_info.serial if identity.cert_info is not None else None
            if installed_serial(identity) not in (None, running):
                changed = True  # installed by someone else: a reload checks and takes it
                continue
            if self.clock() < self.next_renewal(identity):
                continue
            try:
                got = await self.obtain(identity, acme)
            except CertificateRequestError as exc:
                self.failures[identity.name] += 1
                self.last_error[identity.name] = str(exc)
                self._retry_at[identity.name] = self.clock() + acme.retry_interval
                log.error("certificate renewal for %s failed (attempt %d), retry in %.0f s; "
                          "the running certificate stays in use: %s", identity.name,
                          self.failures[identity.name], acme.retry_interval, exc)
                continue
            self.renewals[identity.name] += 1
            self.last_error.pop(identity.name, None)
            self._retry_at.pop(identity.name, None)
            log.info("certificate for %s renewed: serial %s, x5u %s", identity.name,
                     got.certificate.serial, got.x5u)
            changed = True
        if changed:
            self._reloading = True
            self.reload()
