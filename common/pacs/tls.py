"""DICOM TLS for the node (PS3.15 Annex B): mutual TLS 1.2+ contexts from PEM files, checked before anything starts.

The node presents ``--tls-cert``/``--tls-key`` and requires a peer certificate that a CA in ``--tls-ca`` signed, as
a server (senders) and as a client (the ``--store-to`` destination, whose certificate must also name its host).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HANDSHAKE_TIMEOUT_S = 10.0  # pynetdicom shakes hands in its accept loop: a silent peer holds it this long at most
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
}


class TlsSetupError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file and what was expected."""


@dataclass(frozen=True)
class TlsFiles:
    """The node's certificate and private key and the CA certificate(s) that peers' certificates must chain to."""

    certificate: Path
    key: Path
    ca: Path


def _read_pem(option: str, path: Path, what: str, block: str) -> str:
    """The file's text; :class:`TlsSetupError` if it cannot be read or holds no ``-----BEGIN [...]<block>-----``."""
    try:
        text = path.read_bytes().decode("ascii", errors="replace")
    except OSError as exc:
        raise TlsSetupError(f"{option} {path}: cannot read it ({exc.strerror or exc}); expected {what}") from None
    if not re.search(f"-----BEGIN [A-Z ]*{block}-----", text):
        raise TlsSetupError(f"{option} {path}: no PEM {block} block in it; expected {what}")
    return text


def _load(context: ssl.SSLContext, files: TlsFiles) -> None:
    _read_pem("--tls-cert", files.certificate, "a PEM certificate", "CERTIFICATE")
    key = _read_pem("--tls-key", files.key, "a PEM private key", "PRIVATE KEY")
    _read_pem("--tls-ca", files.ca, "PEM CA certificate(s)", "CERTIFICATE")
    if "ENCRYPTED" in key:
        raise TlsSetupError(
            f"--tls-key {files.key}: the key is encrypted; expected an unencrypted PEM key (protect it with the "
            "file's permissions: chmod 600)"
        )
    try:
        context.load_cert_chain(files.certificate, files.key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsSetupError(
                f"--tls-key {files.key}: does not match the certificate --tls-cert {files.certificate}; expected "
                "that certificate's private key"
            ) from None
        raise TlsSetupError(
            f"--tls-cert {files.certificate} / --tls-key {files.key}: cannot be loaded ({exc.reason or exc}); "
            "expected a PEM certificate and its PEM private key"
        ) from None
    try:
        context.load_verify_locations(cafile=files.ca)
    except ssl.SSLError as exc:
        raise TlsSetupError(
            f"--tls-ca {files.ca}: cannot be loaded ({exc.reason or exc}); expected PEM CA certificate(s)"
        ) from None


class _ServerContext(ssl.SSLContext):
    """A server context whose handshakes time out, and that reports a failed one (peer ``(host, port)``, reason)."""

    on_failure: Callable[[tuple[str, int], str], None] | None = None

    def wrap_socket(self, sock: socket.socket, *args, **kwargs) -> ssl.SSLSocket:  # type: ignore[override]
        try:
            peer = sock.getpeername()[:2]
        except OSError:
            peer = ("", 0)
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            wrapped = super().wrap_socket(sock, *args, **kwargs)
        except OSError as exc:  # ssl.SSLError included: no certificate, one no trusted CA signed, plain TCP
            if self.on_failure is not None:
                self.on_failure(peer, getattr(exc, "reason", None) or str(exc))
            raise
        wrapped.settimeout(None)
        return wrapped


def server_context(files: TlsFiles, on_failure: Callable[[tuple[str, int], str], None] | None = None) -> ssl.SSLContext:
    """TLS 1.2+ for accepted connections: the node's certificate presented, a client certificate from the CA required."""
    context = _ServerContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    _load(context, files)
    context.on_failure = on_failure
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.2+ to a destination: its certificate checked against the CA and its host name, the node's presented."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and host name checking
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, files)
    return context


def peer_subject(sock: object) -> str:
    """The subject of the peer's certificate as ``CN=…,O=…``; ``""`` for a connection without TLS."""
    if not isinstance(sock, ssl.SSLSocket):
        return ""
    certificate = sock.getpeercert() or {}
    return ",".join(
        f"{_SHORT_NAMES.get(name, name)}={value}" for rdn in certificate.get("subject", ()) for name, value in rdn
    )
