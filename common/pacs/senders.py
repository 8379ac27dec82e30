"""Registered DICOM senders: ``AET@HOST`` entries (``--allow``, ``--allow-file``) and the check of a peer against them.

HOST is an IP address, a network in CIDR form (``10.1.2.0/24``) or ``*``; AET is an AE title or ``*``. A ``*``
matches anything, and only where it is written: ``PACS@*`` is the AE title PACS from any address, ``*@*`` anyone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ANY = "*"
MAX_AE_TITLE = 16
EXPECTED = (
    "expected AET@HOST: an AE title of 1-16 characters (no backslash or control characters) or *, "
    "and an IP address, a CIDR network (10.1.2.0/24) or *"
)
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class SenderEntryError(ValueError):
    """An ``--allow`` entry or allow-file line that is not ``AET@HOST``; the message names it."""


@dataclass(frozen=True)
class AllowedSender:
    """One registered sender: an AE title (``None`` = any) from an address range (``None`` = any)."""

    ae_title: str | None
    network: IpNetwork | None

    def matches(self, calling_ae: str, address: str) -> bool:
        """Whether a peer with this calling AE title at this IP address is this sender."""
        if self.ae_title is not None and calling_ae.strip() != self.ae_title:
            return False
        return self.network is None or (peer_ip(address) in self.network)

    def __str__(self) -> str:
        return f"{self.ae_title or ANY}@{self.network or ANY}"


#: The senders accepted when none are registered: any AE title on this machine's loopback addresses.
LOOPBACK_SENDERS = tuple(AllowedSender(None, network) for network in LOOPBACK_NETWORKS)


def peer_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IP address of a peer (an IPv4 address mapped into IPv6, as a dual-stack socket reports it, as IPv4)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    return (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip


def parse_sender(text: str) -> AllowedSender:
    """``AET@HOST`` as an :class:`AllowedSender`; :class:`SenderEntryError` naming ``text`` if it is not one."""
    ae_title, at, host = text.strip().rpartition("@")
    ae_title = ae_title.strip()
    if not at or not ae_title or not host or len(ae_title) > MAX_AE_TITLE:
        raise SenderEntryError(f"{text!r}: {EXPECTED}")
    if "\\" in ae_title or any(ord(char) < 32 or ord(char) == 127 for char in ae_title):
        raise SenderEntryError(f"{text!r}: {EXPECTED}")
    if host == ANY:
        network = None
    else:
        try:
            network = ipaddress.ip_network(host, strict=True)
        except ValueError as exc:
            raise SenderEntryError(f"{text!r}: {EXPECTED} (HOST: {exc})") from None
    return AllowedSender(None if ae_title == ANY else ae_title, network)


def read_allow_file(path: str | Path) -> list[AllowedSender]:
    """The senders in a file of ``AET@HOST`` lines (blank lines and ``#`` comments ignored).

    Raises :class:`SenderEntryError` naming the file and line for an unreadable file or a malformed line.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SenderEntryError(f"--allow-file {path}: cannot read it ({exc}); {EXPECTED} on each line") from None
    senders = []
    for number, line in enumerate(lines, start=1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            try:
                senders.append(parse_sender(entry))
            except SenderEntryError as exc:
                raise SenderEntryError(f"{path}:{number}: {exc}") from None
    return senders


def is_allowed(senders: tuple[AllowedSender, ...], calling_ae: str, address: str) -> bool:
    """Whether any registered sender matches this calling AE title and peer address."""
    return any(sender.matches(calling_ae, address) for sender in senders)


def is_loopback_host(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only (``127.x``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
