"""Address allow-lists (``--metrics-address``): parsed once by config, matched per request."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow_list(text: str) -> tuple[Network, ...]:
    """``"127.0.0.1,::1,10.0.0.0/8"`` -> networks; ValueError names the bad entry."""
    networks = []
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR: {item!r}") from None
    return tuple(networks)


def address_allowed(address: str | None, networks: Iterable[Network]) -> bool:
    """Whether a client address is in the list (IPv4-mapped IPv6 counts as IPv4)."""
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)
