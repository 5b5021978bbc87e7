# srsd doctor's DNS checks against a real authoritative server (NSD) with zones per case.
"""SPF (evaluated by pyspf with RFC 7208's limits), MX and DMARC of the SRS domain, as
``srsd doctor`` gathers them through ``dns_servers`` and judges them; each ✗ case applies the
printed DNS record and must then be ✓."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from srsd.config.settings import InetEndpoint
from srsd.doctor import checks_host
from srsd.doctor.dns import dns_facts
from srsd.doctor.facts import DnsFacts
from srsd.doctor.result import FixKind, Result, Status
from tests.harness.dns_server import NsdServer

DOMAIN = "srs.example.test"
HOST = "mx.example.test"
SENDING = ("192.0.2.25", "2001:db8::25")
BASE = "mx 60 IN A 192.0.2.25\nmx 60 IN AAAA 2001:db8::25\nelsewhere 60 IN A 198.51.100.7\n"


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsdServer]:
    with NsdServer(tmp_path_factory.mktemp("nsd"), {"example.test": BASE}) as server:
        yield server


def txt(text: str) -> str:
    """A TXT record's value in zone-file syntax, split into strings of at most 255 octets
    (receivers join them)."""
    return " ".join(f'"{text[i : i + 200]}"' for i in range(0, len(text), 200))


def serve(nsd: NsdServer, records: str) -> None:
    nsd.load({"example.test": BASE + records})


def gather(nsd: NsdServer, sending: tuple[str, ...] = SENDING) -> DnsFacts:
    return dns_facts(DOMAIN, sending, (InetEndpoint("127.0.0.1", nsd.port),), 5.0)


def spf_of(nsd: NsdServer) -> Result:
    return checks_host.spf(gather(nsd), SENDING, "sending_addresses")


def mx_of(nsd: NsdServer, relays: tuple[str, ...] = ()) -> Result:
    return checks_host.mx(gather(nsd), [HOST], SENDING, relays, HOST)


def apply(nsd: NsdServer, records: str, result: Result) -> None:
    """Serve ``records`` with the fix's record in place of the old record of its type."""
    assert result.fix is not None and result.fix.kind is FixKind.DNS
    (line,) = result.fix.lines
    name, kind, value = line.split(" ", 2)
    assert name == f"{DOMAIN}."
    kept = [r for r in records.splitlines() if not (r.startswith("srs ") and f" {kind} " in r)]
    if kind == "TXT":
        kept = [r for r in kept if not (r.startswith("srs ") and "v=spf1" in r)]
    serve(nsd, "\n".join([*kept, f"srs 60 IN {kind} {value}"]) + "\n")


def test_spf_passing_for_every_sending_address(nsd: NsdServer) -> None:
    serve(nsd, 'srs 60 IN TXT "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"\n')
    result = spf_of(nsd)
    assert result.status is Status.OK, result


@pytest.mark.parametrize(
    ("records", "words"),
    [
        ("srs 60 IN MX 10 mx.example.test.\n", "has no SPF record"),
        ('srs 60 IN TXT "v=spf1 ip4:192.0.2.25 -all"\n', "2001:db8::25: fail"),
        ('srs 60 IN TXT "v=spf1 a:elsewhere.example.test ~all"\n', "softfail"),
        # 11 DNS-querying terms: over RFC 7208's limit of 10, a permerror at every receiver
        (
            "srs 60 IN TXT "
            + txt("v=spf1 " + " ".join(f"include:i{n}.example.test" for n in range(11)) + " -all")
            + "\n"
            + "".join(f'i{n} 60 IN TXT "v=spf1 ip4:203.0.113.{n} -all"\n' for n in range(11)),
            "permerror",
        ),
        # three lookups that find nothing: over the void lookup limit of 2
        (
            'srs 60 IN TXT "v=spf1 a:v1.example.test a:v2.example.test a:v3.example.test '
            'ip4:192.0.2.25 ip6:2001:db8::25 -all"\n',
            "Void lookup limit",
        ),
    ],
    ids=["no-record", "one-address-missing", "softfail", "ten-lookups", "void-lookups"],
)
def test_spf_failure_and_its_fix(nsd: NsdServer, records: str, words: str) -> None:
    serve(nsd, records)
    result = spf_of(nsd)
    assert result.status is Status.FAIL, result
    assert words in result.summary
    apply(nsd, records, result)
    assert spf_of(nsd).status is Status.OK, spf_of(nsd)


def test_ten_lookups_is_within_the_limit(nsd: NsdServer) -> None:
    """The limit itself: 10 include terms still evaluate (9 + the one that matches)."""
    includes = " ".join(f"include:i{n}.example.test" for n in range(9))
    records = (
        "srs 60 IN TXT "
        + txt(f"v=spf1 {includes} include:ok.example.test -all")
        + "\n"
        + "".join(f'i{n} 60 IN TXT "v=spf1 ip4:203.0.113.{n} -all"\n' for n in range(9))
        + 'ok 60 IN TXT "v=spf1 ip4:192.0.2.25 ip6:2001:db8::25 -all"\n'
    )
    serve(nsd, records)
    assert spf_of(nsd).status is Status.OK, spf_of(nsd)


def test_two_void_lookups_are_within_the_limit(nsd: NsdServer) -> None:
    serve(
        nsd,
        'srs 60 IN TXT "v=spf1 a:v1.example.test a:v2.example.test ip4:192.0.2.25 '
        'ip6:2001:db8::25 -all"\n',
    )
    assert spf_of(nsd).status is Status.OK, spf_of(nsd)


def test_no_sending_address_known_is_a_warning(nsd: NsdServer) -> None:
    serve(nsd, "")
    result = checks_host.spf(gather(nsd, ()), (), "this host's global addresses")
    assert result.status is Status.WARN
    assert result.fix is not None and result.fix.kind is FixKind.SETTINGS
    assert "sending_addresses" in result.fix.lines[0]


def test_nonexistent_domain_fails(nsd: NsdServer) -> None:
    serve(nsd, "")
    facts = dns_facts("gone.example.test", SENDING, (InetEndpoint("127.0.0.1", nsd.port),), 5.0)
    assert facts.error is not None and "NXDOMAIN" in facts.error
    assert checks_host.mx(facts, [HOST], SENDING, (), HOST).status is Status.FAIL


@pytest.mark.parametrize(
    "records",
    [
        "srs 60 IN MX 10 mx.example.test.\n",
        "srs 60 IN A 192.0.2.25\n",  # no MX: the A fallback
    ],
    ids=["mx", "a-fallback"],
)
def test_mail_to_the_srs_domain_comes_here(nsd: NsdServer, records: str) -> None:
    serve(nsd, records)
    assert mx_of(nsd).status is Status.OK, mx_of(nsd)


@pytest.mark.parametrize(
    "records",
    [
        "srs 60 IN MX 10 elsewhere.example.test.\n",
        "srs 60 IN MX 0 .\n",  # null MX (RFC 7505)
        "srs 60 IN A 198.51.100.7\n",
    ],
    ids=["mx-elsewhere", "null-mx", "a-elsewhere"],
)
def test_mail_to_the_srs_domain_goes_elsewhere_and_the_fix(nsd: NsdServer, records: str) -> None:
    serve(nsd, records)
    result = mx_of(nsd)
    assert result.status is Status.FAIL, result
    apply(nsd, records, result)
    assert mx_of(nsd).status is Status.OK, mx_of(nsd)


def test_an_inbound_relay_counts_as_home(nsd: NsdServer) -> None:
    serve(nsd, "srs 60 IN MX 10 elsewhere.example.test.\n")
    assert mx_of(nsd, ("elsewhere.example.test",)).status is Status.OK
    assert mx_of(nsd, ("198.51.100.7",)).status is Status.OK


@pytest.mark.parametrize(
    ("records", "status"),
    [
        ('_dmarc.srs 60 IN TXT "v=DMARC1; p=reject"\n', Status.FAIL),
        ('_dmarc 60 IN TXT "v=DMARC1; p=none; sp=quarantine"\n', Status.FAIL),  # parent's sp=
        ('_dmarc 60 IN TXT "v=DMARC1; p=reject; sp=none"\n', Status.OK),
        (
            '_dmarc.srs 60 IN TXT "v=DMARC1; p=reject"\nsrs 60 IN TXT "v=spf1 ip4:192.0.2.25 '
            'ip6:2001:db8::25 -all"\n',
            Status.OK,
        ),
        ("", Status.OK),
    ],
    ids=["reject-spf-failing", "parent-sp", "parent-sp-none", "reject-spf-passing", "none"],
)
def test_dmarc(nsd: NsdServer, records: str, status: Status) -> None:
    serve(nsd, records + "srs 60 IN MX 10 mx.example.test.\n")
    result = checks_host.dmarc(gather(nsd))
    assert result.status is status, result
