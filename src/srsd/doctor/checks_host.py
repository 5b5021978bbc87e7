# doctor's checks of the SRS domain's SPF, MX and DMARC, and of the clock: pure functions.
"""Judge what receivers will see: the SRS domain's SPF must pass for every address this
host sends from, its MX (or A/AAAA fallback) must lead back to this host or a configured
inbound relay, a DMARC policy on it must not fail SRS senders, and the clock must be
synchronized (SRS timestamps count days: a host a day off rejects its peers' fresh bounces).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from srsd.doctor.facts import ClockFacts, ClockState, DnsFacts
from srsd.doctor.result import FixKind, Result


def _mechanism(address: str) -> str:
    return f"ip{ipaddress.ip_address(address).version}:{address}"


def spf_record_for(record: str | None, addresses: Sequence[str], keep: bool) -> str:
    """``record`` with a mechanism for each of ``addresses`` before its ``all`` (a new
    record when there is none, or when ``keep`` is false: one that needs no lookups)."""
    adds = [_mechanism(a) for a in addresses]
    if record is None or not keep:
        return " ".join(["v=spf1", *adds, "-all"])
    terms = record.split()
    ending = [
        t
        for t in terms[1:]
        if t.lower().lstrip("+-~?") == "all" or t.lower().startswith("redirect=")
    ]
    body = [t for t in terms[1:] if t not in ending and t not in adds]
    return " ".join(["v=spf1", *body, *adds, *(ending or ["-all"])])


def spf(facts: DnsFacts, sending: Sequence[str], source: str) -> Result:
    """The SRS domain's SPF passes for every address this host sends from."""
    name = "spf"
    if not sending:
        return Result.warn(
            name,
            f"this host has no public address to check {facts.domain}'s SPF for ({source}): "
            "behind NAT, list the addresses mail leaves from",
            FixKind.SETTINGS,
            'sending_addresses = ["192.0.2.25"]   # your public address(es)',
        )
    if facts.error is not None:
        return Result.fail(
            name,
            f"cannot check SPF of {facts.domain} ({facts.resolver}): {facts.error}",
            FixKind.DNS,
            f'{facts.domain}. TXT "{spf_record_for(None, sending, keep=False)}"',
        )
    failing = [v for v in facts.spf if v.result != "pass"]
    if not failing:
        shown = ", ".join(v.address for v in facts.spf)
        return Result.ok(name, f"SPF of {facts.domain} passes for {shown} ({source})")
    if facts.spf_record is None:
        summary = (
            f"{facts.domain} has no SPF record: every forwarded message gets SPF 'none' at the "
            "next hop, as if SRS were not there"
        )
    else:
        listed = "; ".join(f"{v.address}: {v.result} ({v.explanation})" for v in failing)
        summary = f"SPF of {facts.domain} does not pass for this host ({listed}): forwards fail SPF"
    permerror = any(v.result == "permerror" for v in failing)
    record = spf_record_for(facts.spf_record, [v.address for v in failing], keep=not permerror)
    return Result.fail(name, summary, FixKind.DNS, f'{facts.domain}. TXT "{record}"')


def mx(
    facts: DnsFacts,
    own_names: Sequence[str],
    own_addresses: Sequence[str],
    relays: Sequence[str],
    hostname: str,
) -> Result:
    """Mail to the SRS domain (its MX, else its A/AAAA) reaches this host or an inbound relay."""
    name = "mx"
    fix = f"{facts.domain}. MX 10 {hostname}."
    if facts.error is not None:
        return Result.fail(
            name, f"cannot check where mail to {facts.domain} goes: {facts.error}", FixKind.DNS, fix
        )
    if facts.mx is not None and all(not host for _, host in facts.mx):
        return Result.fail(
            name,
            f"{facts.domain} publishes a null MX: it accepts no mail, so no bounce comes home",
            FixKind.DNS,
            fix,
        )
    names = {n.lower() for n in (*own_names, *relays)}
    addresses = {str(ipaddress.ip_address(a)) for a in (*own_addresses, *relays) if _is_address(a)}
    via = "MX" if facts.mx is not None else "A/AAAA (no MX)"
    for host, found in facts.hosts.items():
        if host.lower() in names or addresses & set(found):
            return Result.ok(
                name, f"mail to {facts.domain} goes to {host} ({via}), this host or its relay"
            )
    shown = (
        ", ".join(f"{h} ({', '.join(a) or 'no address'})" for h, a in facts.hosts.items())
        or "nowhere"
    )
    return Result.fail(
        name,
        f"mail to {facts.domain} goes to {shown} ({via}), not to this host or an inbound_relays "
        "host: bounces of forwarded mail never come home",
        FixKind.DNS,
        fix,
    )


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            tags[key.strip().lower()] = value.strip().lower()
    return tags


def dmarc(facts: DnsFacts) -> Result:
    """No DMARC policy that rejects or quarantines mail from the SRS domain while its SPF
    does not pass for this host (Postfix writes a missing From: from the envelope sender, the
    SRS address, so such mail is judged by the SRS domain's DMARC)."""
    name = "dmarc"
    if facts.error is not None or facts.dmarc is None:
        return Result.ok(name, f"no DMARC record applies to {facts.domain}")
    found_at, record = facts.dmarc
    tags = _tags(record)
    policy = tags.get("p", "none")
    if found_at != facts.domain:
        policy = tags.get("sp", policy)
    failing = [v.address for v in facts.spf if v.result != "pass"]
    if policy in ("reject", "quarantine") and failing:
        return Result.fail(
            name,
            f"DMARC of {found_at} says {policy} for {facts.domain} and its SPF does not pass for "
            f"{', '.join(failing)}: mail from SRS addresses is {policy}ed",
            FixKind.TEXT,
            "fix the SPF record (see spf above), or publish p=none for the SRS domain",
        )
    return Result.ok(name, f"DMARC of {found_at} ({policy}) does not fail SRS senders")


def clock(facts: ClockFacts) -> Result:
    """The system clock is synchronized (! when unknown)."""
    if facts.state is ClockState.SYNCHRONIZED:
        return Result.ok("clock", f"the system clock is synchronized ({facts.source})")
    what = (
        "is not synchronized"
        if facts.state is ClockState.UNSYNCHRONIZED
        else "may not be synchronized"
    )
    return Result.warn(
        "clock",
        f"the system clock {what} ({facts.source}): SRS timestamps count days, so a clock a "
        "day off makes peers' fresh bounces look expired or from the future",
        FixKind.SHELL,
        "apt-get install systemd-timesyncd && timedatectl set-ntp true",
    )
