"""The tests' STI-CA profile for acme2certifier: its OpenSSL CA handler, plus the TNAuthList
extension copied from the CSR into the certificate (the openssl handler copies only the
subjectAltName; an STI-CA issues what the authorized TNAuthList identifier names, and
acme2certifier checks the issued certificate against the order's identifiers)."""

from __future__ import annotations

from typing import Any

from acme2certifier.cahandlers.openssl_ca_handler import CAhandler as OpensslCAhandler

TN_AUTH_LIST_OID = "1.3.6.1.5.5.7.1.26"


class CAhandler(OpensslCAhandler):  # type: ignore[misc]
    def _cert_extension_apply(self, builder: Any, ca_cert: Any, req: Any) -> Any:
        builder = super()._cert_extension_apply(builder, ca_cert, req)
        for ext in req.extensions if req is not None else ():
            if ext.oid.dotted_string == TN_AUTH_LIST_OID:
                builder = builder.add_extension(ext.value, critical=False)
        return builder
