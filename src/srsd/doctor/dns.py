# doctor's DNS gatherer: the SRS domain's SPF (evaluated), MX and DMARC, from a real resolver.
"""Ask DNS what receivers will ask about the SRS domain, with dnspython as the resolver.

**SPF is evaluated by pyspf**, not by hand: it is the evaluator of Debian's SPF policy
daemons (``python3-spf``, packaged in Debian 12 beside ``python3-dnspython``), implements
RFC 7208 with its processing limits (10 DNS-querying terms, 2 void lookups: past either, the
result is ``permerror``, as a receiver sees it), and is one small pure-Python module with no
other dependency. checkdmarc does more (DMARC, BIMI, MTA-STS reports) but pulls in a dozen
packages Debian 12 does not have; doctor needs only the SPF verdict for each address this
host sends from, which is exactly pyspf's ``query.check()``.

pyspf looks names up through dnspython's default resolver; while it evaluates, that default
is the resolver built from ``dns_servers`` (:func:`_spf_through`), so tests and split-horizon
hosts see one consistent view.

The DMARC record in force is the SRS domain's own, else the nearest parent's with at least
two labels (an approximation of RFC 7489's organizational domain that needs no public suffix
list).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import dns.exception
import dns.resolver
import spf  # type: ignore[import-untyped]

from srsd.config.settings import InetEndpoint
from srsd.doctor.facts import DnsFacts, SpfVerdict


def make_resolver(servers: tuple[InetEndpoint, ...], timeout: float) -> dns.resolver.Resolver:
    """``servers`` when given, else the system's resolver (``/etc/resolv.conf``)."""
    if servers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameserver_ports = {s.host: s.port for s in servers}  # before nameservers
        resolver.nameservers = [s.host for s in servers]
    else:
        resolver = dns.resolver.Resolver()
    resolver.timeout = resolver.lifetime = timeout
    return resolver


def describe(servers: tuple[InetEndpoint, ...]) -> str:
    """The resolver in words."""
    return ", ".join(s.host_port for s in servers) if servers else "the system resolver"


@contextlib.contextmanager
def _spf_through(resolver: dns.resolver.Resolver) -> Iterator[None]:
    saved = dns.resolver.default_resolver
    dns.resolver.default_resolver = resolver
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pyspf calls query()
            yield
    finally:
        dns.resolver.default_resolver = saved


def _txt(resolver: dns.resolver.Resolver, name: str, prefix: str) -> str | None:
    """The TXT record at ``name`` that starts with ``prefix`` (case-insensitively)."""
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    for rdata in answer:
        text = b"".join(rdata.strings).decode("utf-8", "replace")
        if text.lower().startswith(prefix.lower()):
            return text
    return None


def _addresses(resolver: dns.resolver.Resolver, name: str) -> tuple[str, ...]:
    found: list[str] = []
    for kind in ("A", "AAAA"):
        with contextlib.suppress(dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            found += [rdata.address for rdata in resolver.resolve(name, kind)]
    return tuple(found)


def dns_facts(
    domain: str,
    sending: tuple[str, ...],
    servers: tuple[InetEndpoint, ...],
    timeout: float,
) -> DnsFacts:
    """The SPF record of ``domain`` and its verdict for each of ``sending``, the hosts its
    mail goes to (MX, else the domain itself) with their addresses, and the DMARC record."""
    shown = describe(servers)
    try:
        resolver = make_resolver(servers, timeout)
        record = _txt(resolver, domain, "v=spf1 ")
        with _spf_through(resolver):
            verdicts = tuple(SpfVerdict(a, *_spf(a, domain, timeout)) for a in sending)
        mx: tuple[tuple[int, str], ...] | None
        try:
            answer = resolver.resolve(domain, "MX")
            mx = tuple(
                sorted((r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer)
            )
        except dns.resolver.NoAnswer:
            mx = None
        targets = [host for _, host in mx if host] if mx is not None else [domain]
        hosts = {host: _addresses(resolver, host) for host in targets}
        dmarc = None
        labels = domain.split(".")
        for start in range(len(labels) - 1):
            name = ".".join(labels[start:])
            found = _txt(resolver, f"_dmarc.{name}", "v=DMARC1")
            if found is not None:
                dmarc = (name, found)
                break
    except dns.resolver.NXDOMAIN:
        return DnsFacts(domain, shown, error=f"{domain} does not exist in DNS (NXDOMAIN)")
    except (dns.exception.DNSException, OSError) as err:
        return DnsFacts(domain, shown, error=f"DNS lookup failed: {err}")
    return DnsFacts(domain, shown, record, verdicts, mx, hosts, dmarc)


def _spf(address: str, domain: str, timeout: float) -> tuple[str, str]:
    query = spf.query(i=address, s=f"postmaster@{domain}", h=domain, querytime=timeout)
    result, _code, explanation = query.check()
    return str(result), str(explanation)
