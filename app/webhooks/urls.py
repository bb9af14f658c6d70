"""Which webhook URLs and addresses we may send to.

Checked when an endpoint is created and again at every delivery against the address actually
connected to, so a name that later resolves to a private address (DNS rebinding) is refused.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(ValueError):
    """The URL or the address it resolves to is not allowed; the message says why."""


def parse(url: str, allow_private: bool) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL we may send to, as far as the text alone can tell."""
    if (
        len(url) > MAX_URL_CHARS
        or not url.isascii()
        or any(not c.isprintable() or c.isspace() for c in url)
    ):
        raise UrlRefused("the URL must be at most 2048 printable ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise UrlRefused("the URL cannot be parsed") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise UrlRefused(f"the URL must start with {' or '.join(s + '://' for s in schemes)}")
    if not host:
        raise UrlRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("the URL must not carry credentials")
    if parts.fragment:
        raise UrlRefused("the URL must not have a fragment")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def address_allowed(address: IPAddress, allow_private: bool) -> bool:
    """Whether we may connect to the address: public unicast, or anything when private is allowed."""
    if allow_private:
        return True
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def resolve(host: str, port: int, allow_private: bool) -> list[IPAddress]:
    """The host's addresses, all of them allowed; UrlRefused if any is not or none is found."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        raise UrlRefused("the URL's host does not resolve") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UrlRefused("the URL's host does not resolve")
    # Every address must pass: a name with one public and one private address is a rebinding trap.
    if not all(address_allowed(a, allow_private) for a in addresses):
        raise UrlRefused("the URL's host resolves to a private, loopback or reserved address")
    return addresses


def check(url: str, allow_private: bool) -> None:
    """Raise UrlRefused unless the URL may be used (its host is resolved when private is not)."""
    _, host, port = parse(url, allow_private)
    if not allow_private:
        resolve(host, port, allow_private)
