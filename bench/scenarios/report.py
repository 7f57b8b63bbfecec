"""Issue 8's targets and Markdown tables for the distinct-user scenarios."""
from __future__ import annotations

from typing import Any


def _f(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    elif isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:,}"
    return f"{value}{unit}"


def _pair(d: dict[str, Any], a: str = "mean", b: str = "max") -> str:
    return f"{_f(d.get(a))} / {_f(d.get(b))}"


def _setup(d: dict[str, Any]) -> str:
    return f"{d.get('processes')} process(es), {d.get('broker')} broker, {d.get('database', '')}"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    sc = results["scenarios"]
    out: list[dict[str, Any]] = []

    def add(name: str, value: Any, limit: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "value": value, "limit": limit, "met": met,
                    "detail": detail})

    d = sc.get("distinct", {})
    if "distinct" in d and "one_user" in d:
        a, b = d["distinct"], d["one_user"]
        rs = d.get("ratio_seconds")
        add(f"{d['n']} distinct users connect vs {d['n']} sockets of one user", rs,
            "<= 3, nothing lost", rs is not None and rs <= 3 and a["lost"] == 0
            and a["errors"] == 0,
            f"{a['seconds']} s vs {b['seconds']} s; all events after {a['converged_s']} s; "
            f"lost {a['lost']} (verified {a['verified']}); errors {a['errors']}")
    r = sc.get("reconnect", {})
    if "lost" in r:
        s = r.get("seconds")
        add(f"restart with {r['n']} distinct clients: fresh snapshots and /api/users true",
            s, "<= 15 s, nothing lost", s is not None and s <= 15 and r["lost"] == 0,
            f"every client fresh after {r['last_fresh_s']} s; lost {r['lost']}")
    c = sc.get("churn", {}).get("distinct", {})
    if "last_viewer_ms" in c:
        p95 = c["last_viewer_ms"]["p95"]
        complete = c["events"] >= 0.95 * c["rate"] * c["seconds"]
        add(f"churn {c['rate']:.0f}/s for {c['seconds']:.0f} s with {c['n']} distinct users "
            "online: fan-out p95", p95, "<= 250 ms, every socket gets every transition",
            p95 is not None and p95 <= 250 and c["lost"] == 0 and complete,
            f"{c['events']} transitions ({c['events_per_s']}/s); lost {c['lost']}")
    return out


def render(results: dict[str, Any]) -> list[str]:
    sc = results["scenarios"]
    lines: list[str] = []
    d = sc.get("distinct", {})
    if "distinct" in d:
        lines += [f"## Distinct users connect (N={d['n']}, {_setup(d)}; page-like clients, "
                  f"permessage-deflate offered: {'yes' if d['compress_offered'] else 'no'})", "",
                  "Seconds from the first SYN until every socket has its snapshot; then until "
                  "the presence traffic stops (every socket has every event). Lost: sockets "
                  "whose final view is not everyone online, or closed (verified: checked; "
                  f"{d['verify_sample']} in full, the others by counting). Bytes and frames per "
                  "socket: everything it received (snapshot included).", "",
                  "| workload | seconds to all snapshots | connects/s | seconds to all events "
                  "| errors | lost (verified) | snapshot bytes on the wire p50 / max | "
                  "snapshot bytes uncompressed p50 | snapshot frames | compressed snapshots | "
                  "bytes per socket mean / max | frames per socket mean / max | server CPU s | "
                  "generator CPU s | server KiB per socket |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
                  "| --- | --- |"]
        for key, name in (("one_user", f"{d['n']} sockets of one user"),
                          ("distinct", f"{d['n']} distinct users")):
            s = d.get(key)
            if not s:
                continue
            lines.append(
                f"| {name} | {_f(s['seconds'])} | {_f(s['connects_per_s'])} | "
                f"{_f(s['converged_s'])} | {s['errors']} | {s['lost']} ({s['verified']}) | "
                f"{_pair(s['snapshot_wire_bytes'], 'p50')} | "
                f"{_f(s['snapshot_raw_bytes']['p50'])} | {_f(s['snapshot_frames']['max'])} | "
                f"{s['compressed']} | {_pair(s['bytes_per_view'])} | "
                f"{_pair(s['frames_per_view'])} | {_f(s['server_cpu_s'])} | "
                f"{_f(s['generator_cpu_s'])} | {_f(s.get('kib_per_socket'))} |")
        lines += [f"| ratio | **{_f(d.get('ratio_seconds'))}** | | "
                  f"{_f(d.get('ratio_converged'))} | | | | | | | | | | | |", ""]
        if len(d.get("sizes", {})) > 1:
            lines += ["Sizes (each storm on a fresh app):", "",
                      "| N | one user s | distinct s | distinct, all events s | ratio | lost | "
                      "snapshot bytes on the wire p50 | bytes per socket mean |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for size, row in d["sizes"].items():
                a, b = row["distinct"], row["one_user"]
                lines.append(f"| {_f(int(size))} | {_f(b['seconds'])} | {_f(a['seconds'])} | "
                             f"{_f(a['converged_s'])} | {_f(row['ratio_seconds'])} | "
                             f"{a['lost']} | {_f(a['snapshot_wire_bytes']['p50'])} | "
                             f"{_f(a['bytes_per_view']['mean'])} |")
            lines.append("")
    r = sc.get("reconnect", {})
    if "lost" in r:
        lines += [f"## Restart with N={r['n']} distinct page-like clients ({_setup(r)}; app "
                  f"args {' '.join(r['app_args']) or 'none'})", "",
                  "Seconds from the SIGTERM. Clients reconnect like the page: full-jitter "
                  f"backoff (base {r['policy']['base_s']} s, cap {r['policy']['cap_s']} s), "
                  f"at least random 0-{r['policy']['first_s']} s after a 1001; before each "
                  f"attempt GET {r['policy']['probe'] or '(nothing)'}.", "",
                  "| processes exited | ready again | every client has a fresh snapshot | "
                  "/api/users shows everyone online | lost | attempts per client mean / max | "
                  "refused attempts | probes (failed) | snapshot bytes on the wire p50 | "
                  "bytes per client mean | server CPU s since the restart |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                  f"| {_f(r['down_s'])} | {_f(r['ready_s'])} | {_f(r['last_fresh_s'])} | "
                  f"**{_f(r['seconds'])}** | {r['lost']} | {_pair(r['attempts_per_view'])} | "
                  f"{_f(r['refused'])} | {_f(r['probes'])} ({_f(r['probe_failures'])}) | "
                  f"{_f(r['snapshot_wire_bytes']['p50'])} | "
                  f"{_f(r['bytes_per_view']['mean'])} | "
                  f"{_f(r['server_cpu_since_restart_s'])} |", ""]
    c = sc.get("churn", {}).get("distinct", {})
    if "last_viewer_ms" in c:
        s, p = c["last_viewer_ms"], c["per_delivery_ms"]
        lines += [f"## Churn with {c['n']} distinct users online ({_setup(c)}; {c['movers']} "
                  f"movers, {c['rate']:.0f} transitions/s for {c['seconds']:.0f} s)", "",
                  "Latency: from the mover's connect (or close) until the last viewer has the "
                  "event (kernel receive time); per delivery: every viewer. Lost: deliveries "
                  "missing, plus viewers whose final view is wrong.", "",
                  "| events | events/s | last viewer p50 / p95 / p99 / max ms | per delivery "
                  "p50 / p95 / p99 ms | lost | frames/s per viewer mean / max | bytes/s per "
                  "viewer mean / max | server CPU s | generator CPU s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                  f"| {_f(c['events'])} | {_f(c['events_per_s'])} | {_f(s['p50'])} / "
                  f"**{_f(s['p95'])}** / {_f(s['p99'])} / {_f(s['max'])} | {_f(p['p50'])} / "
                  f"{_f(p['p95'])} / {_f(p['p99'])} | {c['lost']} | "
                  f"{_pair(c['frames_per_s_per_viewer'])} | "
                  f"{_pair(c['bytes_per_s_per_viewer'])} | {_f(c['server_cpu_s'])} | "
                  f"{_f(c['generator_cpu_s'])} |", ""]
    return lines
