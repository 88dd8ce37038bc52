"""TLS between the CLI, the controller and the agents: who trusts what, a
local certificate authority for `pinfold up`, and the warnings for plain HTTP
off loopback (tokens would cross the network in clear).

A peer is verified against a CA file (`tls_ca` in the daemons' settings,
`ca_file` in the CLI's): the certificate authority that signed the peers'
certificates, or, to pin one peer, that peer's own self-signed certificate (a
self-signed certificate is its own CA, and nothing else chains to it). The
host name or address in the URL must be in the certificate's names. Without a
CA file the system's CAs are trusted.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # cryptography is loaded only when certificates are made
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "LocalCertificates",
    "client_context",
    "is_loopback",
    "local_certificates",
    "tls_failure",
    "url_host",
    "warn_plain_listener",
    "warn_plain_url",
]

log = logging.getLogger("pinfold.tls")

#: how long `pinfold up`'s certificates last
VALIDITY = datetime.timedelta(days=3650)


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """What an HTTPS client verifies its peer with: `ca_file`, or the system's CAs."""
    if ca_file is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(ca_file))


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address; a wildcard (0.0.0.0, ::) is not."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """A host as a URL holds it: an IPv6 address bracketed (once)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def warn_plain_listener(who: str, host: str, tls: bool) -> bool:
    """Warn (and say so) when `who` serves plain HTTP on a non-loopback address."""
    if tls or is_loopback(host):
        return False
    log.warning(
        "%s: listening on %s without TLS: tokens cross the network in clear (set tls_cert and tls_key)",
        who,
        host,
    )
    return True


def warn_plain_url(who: str, url: str) -> bool:
    """Warn (and say so) when `who` talks plain HTTP to a non-loopback address."""
    parts = urlsplit(url)
    if parts.scheme != "http" or is_loopback(parts.hostname or ""):
        return False
    log.warning("%s: %s is plain HTTP: tokens cross the network in clear (use https://)", who, url)
    return True


def tls_failure(error: BaseException) -> str | None:
    """One line for a TLS failure somewhere in `error`'s causes (httpx and
    urllib3 wrap ssl's errors), or None when it was not one."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS: the peer's certificate is not trusted ({seen.verify_message}): check the CA file"
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass(frozen=True)
class LocalCertificates:
    """A local CA's certificate and one certificate (with its key) it signed."""

    ca: Path
    cert: Path
    key: Path


def local_certificates(
    directory: Path, names: tuple[str, ...] = ("localhost",), addresses: tuple[str, ...] = ("127.0.0.1",)
) -> LocalCertificates:
    """The CA and node certificate in `directory`, made on first use (mode
    0600): `ca.pem` (and its key `ca.key`, kept to sign more), `node.pem` and
    `node.key`, the node's valid for `names` and `addresses`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    found = LocalCertificates(directory / "ca.pem", directory / "node.pem", directory / "node.key")
    if all(path.exists() for path in (found.ca, found.cert, found.key)):
        return found
    ca_key, node_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _authority(ca_key)
    node = _node(ca, ca_key, node_key, names, addresses)
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    _write_private(directory / "ca.key", ca_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    _write_private(found.key, node_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    _write_private(found.cert, node.public_bytes(pem))
    _write_private(found.ca, ca.public_bytes(pem))  # last: its presence says the set is whole
    return found


def _authority(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A self-signed CA certificate that signs node certificates only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pinfold local CA")])
    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    return (
        _valid(x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _node(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    names: tuple[str, ...],
    addresses: tuple[str, ...],
) -> x509.Certificate:
    """A server (and client) certificate for `names` and `addresses`, signed by `ca`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    alternative: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    alternative += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or addresses)[0])])
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    return (
        _valid(
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(key.public_key())
        )
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _valid(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    """A random serial, and `VALIDITY` from five minutes ago (clocks differ a little)."""
    from cryptography import x509

    now = datetime.datetime.now(datetime.UTC)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _write_private(path: Path, content: bytes) -> None:
    """`content` at `path`, mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
    path.chmod(0o600)
