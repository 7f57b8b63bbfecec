"""Values as the cells of the report's Markdown tables show them."""

from __future__ import annotations

from typing import Any


def fmt(value: Any, unit: str = "") -> str:
    """A number with thousands separators (two decimals below 100), "-" for nothing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    elif isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:,}"
    return f"{value}{unit}"


def pair(d: dict[str, Any], a: str = "mean", b: str = "max") -> str:
    return f"{fmt(d.get(a))} / {fmt(d.get(b))}"


def setup_fields(o: Any) -> dict[str, Any]:
    """The deployment a scenario ran on, as its results record it (what ``setup`` shows)."""
    return {"processes": o.app_processes, "broker": o.broker, "database": o.database}


def setup(d: dict[str, Any]) -> str:
    return f"{d.get('processes')} process(es), {d.get('broker')} broker, {d.get('database', '')}"


def gc_ms(probe: dict[str, Any]) -> str:
    """The server's garbage-collector time in a phase: total ms (full passes, longest ms)."""
    g = probe.get("server_gc")
    if not g:
        return "-"
    total = g["gen0_ms"] + g["gen1_ms"] + g["gen2_ms"]
    return f"{total:,.0f} ({g['gen2_passes']}, longest {g['longest_ms']:,.0f})"


def drops(probe: dict[str, Any]) -> str:
    """Packets dropped from the loopback backlog / TCP retransmission timeouts in a phase."""
    net = probe.get("net", {})
    return f"{net.get('softnet_dropped', 0)}/{net.get('TCPTimeouts', 0)}"
