"""STI certificates (RFC 8226, ATIS-1000080): TNAuthList and development key material (pure:
bytes in and out, ``now`` comes in; io.keys reads and writes the files)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TN_AUTH_LIST_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.26")


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode_tn_auth_list_spc(spc: str) -> bytes:
    """DER of TNAuthorizationList with one ``spc [0] ServiceProviderCode`` entry.

    RFC 8226 §9 (module with EXPLICIT TAGS): SEQUENCE OF TNEntry; TNEntry ::= CHOICE
    { spc [0] ServiceProviderCode, range [1] ..., one [2] ... }; ServiceProviderCode is IA5String.
    """
    if not spc or not spc.isascii() or not spc.isprintable():
        raise ValueError("SPC must be printable ASCII")
    ia5 = b"\x16" + _der_len(len(spc)) + spc.encode("ascii")
    entry = b"\xa0" + _der_len(len(ia5)) + ia5
    return b"\x30" + _der_len(len(entry)) + entry


def _read_der(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, content, next position) of one DER element; raises ValueError."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos : pos + length], pos + length


def decode_tn_auth_list(der: bytes) -> tuple[list[str], int]:
    """SPCs of a TNAuthorizationList and the number of TN/range entries; raises ValueError."""
    tag, body, end = _read_der(der, 0)
    if tag != 0x30 or end != len(der) or not body:
        raise ValueError("TNAuthList is not a non-empty SEQUENCE")
    spcs: list[str] = []
    others = 0
    pos = 0
    while pos < len(body):
        tag, content, pos = _read_der(body, pos)
        if tag == 0xA0:
            inner_tag, value, inner_end = _read_der(content, 0)
            if inner_tag != 0x16 or inner_end != len(content):
                raise ValueError("spc is not an IA5String")
            spcs.append(value.decode("ascii"))
        elif tag in (0xA1, 0xA2):
            others += 1
        else:
            raise ValueError(f"unknown TNEntry tag {tag:#x}")
    return spcs, others


def certificate_spcs(cert: x509.Certificate) -> list[str]:
    """The SPCs in a certificate's TNAuthList ([] when it has none); raises ValueError if the
    extension is malformed."""
    try:
        ext = cert.extensions.get_extension_for_oid(TN_AUTH_LIST_OID)
    except x509.ExtensionNotFound:
        return []
    value = ext.value
    der = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    return decode_tn_auth_list(der)[0]


def load_private_key_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    """An EC private key from PEM; raises ValueError (or TypeError for an encrypted one)."""
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stirshaken-proxy dev"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue_certificate(*, subject_cn: str, key: ec.EllipticCurvePrivateKey,
                      issuer_cert: x509.Certificate | None,
                      issuer_key: ec.EllipticCurvePrivateKey, ca: bool, spc: str | None,
                      not_before: dt.datetime, not_after: dt.datetime,
                      crl_url: str | None = None, san: tuple[str, ...] = (),
                      usages: tuple[x509.ObjectIdentifier, ...] = ()) -> x509.Certificate:
    """A certificate for tests and development (an STI-CA root, or an end-entity cert).
    ``san``: SubjectAltNames (an IP address, a `sip:` URI, else a DNS name); ``usages``:
    extended key usages (TLS server and client certificates)."""
    issuer = issuer_cert.subject if issuer_cert is not None else _name(subject_cn)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject_cn)).issuer_name(issuer)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    if spc is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(TN_AUTH_LIST_OID, encode_tn_auth_list_spc(spc)),
            critical=False)
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in san]), critical=False)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if crl_url is not None:
        builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None,
            reasons=None, crl_issuer=None)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if name.lower().startswith(("sip:", "sips:")):
        return x509.UniformResourceIdentifier(name)
    return x509.DNSName(name)


def pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True, kw_only=True)
class DevPkiMaterial:
    """A development STI-CA and an end-entity certificate for one SPC, as PEM."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes

    @property
    def chain(self) -> bytes:
        """What x5u serves: the end-entity certificate, then the CA."""
        return self.cert + self.ca_cert


def make_dev_pki(*, spc: str, now: dt.datetime, days: int = 365) -> DevPkiMaterial:
    """An STI root CA and an end-entity certificate with TNAuthList(spc)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue_certificate(subject_cn="stirshaken-proxy dev STI-CA", key=ca_key,
                           issuer_cert=None, issuer_key=ca_key, ca=True, spc=None,
                           not_before=now - dt.timedelta(minutes=5),
                           not_after=now + dt.timedelta(days=days * 3))
    ee_key = ec.generate_private_key(ec.SECP256R1())
    ee = issue_certificate(subject_cn=f"SHAKEN {spc}", key=ee_key, issuer_cert=ca,
                           issuer_key=ca_key, ca=False, spc=spc,
                           not_before=now - dt.timedelta(minutes=5),
                           not_after=now + dt.timedelta(days=days))
    pem = serialization.Encoding.PEM
    return DevPkiMaterial(ca_cert=ca.public_bytes(pem), ca_key=pem_private_key(ca_key),
                          cert=ee.public_bytes(pem), key=pem_private_key(ee_key))
