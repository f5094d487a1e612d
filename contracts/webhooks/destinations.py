"""Where a webhook may be delivered: an http(s) URL whose host resolves only to addresses outside link-local,
cloud metadata, loopback, private and other special ranges (private and loopback only when the deployment
allows private networks). Checked when an endpoint is registered and again before each delivery, since a
name can resolve differently later (DNS rebinding); the API and the delivering worker both call it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from contracts.errors import InvalidRequest

Resolver = Callable[[str, int], list[str]]

#: Cloud metadata endpoints that are not link-local everywhere (AWS's IPv6 one; GCP's and Azure's IPv4 ones
#: are 169.254.169.254, which is link-local).
_METADATA = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def check_destination(url: str, *, allow_private: bool, resolve: Resolver = system_resolver) -> str:
    """The URL, normalised, when a webhook may be delivered there; InvalidRequest (400, code
    `invalid_webhook_url`, param `url`) naming the reason otherwise. Every resolved address must pass."""
    def refuse(reason: str) -> InvalidRequest:
        return InvalidRequest(f"Webhook URL {url!r} is not allowed: {reason}.", code="invalid_webhook_url", param="url")

    if not isinstance(url, str) or len(url) > 2048:
        raise refuse("it must be a string of at most 2048 characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise refuse(f"it does not parse ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise refuse("only http and https URLs receive webhooks")
    if not parts.hostname:
        raise refuse("it has no host")
    if parts.username or parts.password:
        raise refuse("credentials in the URL would be sent to every delivery; use the signing secret")
    try:
        addresses = [ipaddress.ip_address(parts.hostname)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(parts.hostname,
                                                                                port or (443 if parts.scheme == "https" else 80))]
        except OSError:
            raise refuse("its host does not resolve") from None
    if not addresses:
        raise refuse("its host does not resolve")
    for address in addresses:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_link_local or address in _METADATA:
            raise refuse(f"{address} is a link-local or cloud metadata address")
        if address.is_multicast or address.is_unspecified or address.is_reserved:
            raise refuse(f"{address} is not a unicast host address")
        if (address.is_private or address.is_loopback) and not allow_private:
            raise refuse(f"{address} is a private or loopback address (FTAAS_WEBHOOK_ALLOW_PRIVATE_NETWORKS "
                         "allows them)")
    return parts.geturl()
