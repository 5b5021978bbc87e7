# `srsd doctor` end to end: gather the facts, run every check over them, in the order shown.
"""Run every doctor check against the live host (see :mod:`srsd.doctor`).

The order follows the path of a forwarded message and its bounce: srsd's endpoints and
secret, Postfix's wiring, the bounce path through smtpd, the SRS domain in DNS, the clock.
A check whose facts could not be gathered still appears, saying why.
"""

from __future__ import annotations

import socket
import time

from srsd.config.postfix import Mode, WiringError, script, wiring
from srsd.config.settings import Settings
from srsd.doctor import checks_host, checks_postfix, checks_srsd, gather
from srsd.doctor.dns import dns_facts
from srsd.doctor.facts import EndpointFacts, EndpointRole, PostfixFacts, SecretFacts
from srsd.doctor.refs import endpoints
from srsd.doctor.result import FixKind, Result
from srsd.host.health import PROBE
from srsd.srs.codec import Codec


def forge(address: str) -> str:
    """``address`` (an SRS0 address) with its first hash character changed, in every
    spelling the hash comparison treats as equal (case, ``-``/``+``, ``_``/``/``)."""
    start = address.upper().index("SRS0") + 5
    new = "x" if address[start].lower() != "x" else "y"
    return address[:start] + new + address[start + 1 :]


def _local_srs(secret: SecretFacts, settings: Settings) -> bytes | None:
    if not secret.secrets:
        return None
    codec = Codec(
        secret.secrets,
        settings.domain.encode(),
        hash_length=settings.hash_length,
        hash_min=settings.hash_min,
        separator=settings.separator.encode(),
        max_age=settings.max_age,
        alphabet=settings.hash_alphabet,
    )
    return codec.forward(PROBE, time.time())


def _probe_all(settings: Settings, secret: SecretFacts, timeout: float) -> list[EndpointFacts]:
    ours = endpoints(settings)
    fresh = None
    probes: dict[EndpointRole, EndpointFacts] = {}
    for endpoint in sorted(ours, key=lambda e: e.role is not EndpointRole.FORWARD):
        if endpoint.role is EndpointRole.REVERSE and fresh is None:
            fresh = _local_srs(secret, settings)
        probes[endpoint.role] = gather.probe_endpoint(endpoint, fresh, timeout)
        if endpoint.role is EndpointRole.FORWARD:
            answers = checks_srsd.rewritten([probes[endpoint.role]])
            fresh = answers[0] if answers else None
    return [probes[e.role] for e in ours]


def run(settings: Settings, timeout: float = 5.0) -> list[Result]:
    """Every check's result."""
    if not settings.domain:
        return [
            Result.fail(
                "settings",
                "no SRS domain is configured, so nothing can be checked",
                FixKind.SETTINGS,
                'domain = "srs.example.org"',
            )
        ]
    user = gather.environment_user()
    secret = gather.secret_facts(settings)
    probes = _probe_all(settings, secret, timeout)
    results = [checks_srsd.endpoint(p, settings, user) for p in probes]
    results += [
        checks_srsd.secret_private(secret, settings.run_as, user),
        checks_srsd.secret_strength(secret, user),
        checks_srsd.secret_in_use(secret, probes, settings, user),
    ]
    credential = checks_srsd.credential_source(gather.credential_facts(), user)
    if credential is not None:
        results.append(credential)
    ours = endpoints(settings)
    postfix = gather.postfix_facts(ours)
    if postfix.error is not None:
        results.append(
            Result.fail(
                "postfix", postfix.error, FixKind.TEXT, "install Postfix, or set MAIL_CONFIG"
            )
        )
    else:
        results += _postfix_results(settings, postfix, probes, secret, timeout)
    host = gather.host_addresses()
    sending, source = gather.sending_addresses(settings, postfix, host)
    hostname = postfix.expanded.get("myhostname") or socket.getfqdn()
    found = dns_facts(settings.domain, sending, settings.dns_servers, timeout)
    results += [
        checks_host.spf(found, sending, source),
        checks_host.mx(found, [hostname], [*host, *sending], settings.inbound_relays, hostname),
        checks_host.dmarc(found),
        checks_host.clock(gather.clock_facts()),
    ]
    return results


def _postfix_results(
    settings: Settings,
    postfix: PostfixFacts,
    probes: list[EndpointFacts],
    secret: SecretFacts,
    timeout: float,
) -> list[Result]:
    ours = endpoints(settings)
    mode = checks_postfix.mode_in_use(postfix, ours)
    if mode is None:
        default = Mode.MILTER if settings.milter is not None else Mode.CANONICAL
        try:
            lines = [
                line
                for line in script(
                    wiring(settings, default, checks_postfix.site(postfix))
                ).splitlines()
                if not line.startswith("#")
            ]
        except WiringError as err:
            lines = [str(err)]
        return [
            Result.fail(
                "postfix-wiring",
                f"Postfix ({postfix.config_dir}) does not use srsd: no sender_canonical_maps or "
                "milter names an srsd endpoint, so nothing is rewritten",
                FixKind.SHELL,
                f"# what `srsd postfix-config --mode {default.value} | sh` does:",
                *lines,
                checks_postfix.RELOAD,
            )
        ]
    results = [
        Result.ok(
            "postfix-wiring", f"Postfix ({postfix.config_dir}) uses srsd in {mode.value} mode"
        )
    ]
    results += checks_postfix.references_checks(postfix, settings, ours)
    results += checks_postfix.wiring_checks(postfix, settings, ours, mode)
    results.append(checks_postfix.srs_domain(postfix, settings))
    if mode is Mode.CANONICAL:
        results.append(checks_postfix.exclusions(postfix, settings))
    forward = checks_srsd.rewritten(probes)
    valid = forward[0] if forward else _local_srs(secret, settings)
    where = gather.smtpd_address(postfix)
    if valid is None:
        results.append(
            Result.warn(
                "bounce-path",
                "no SRS address of ours to try: srsd's forward map did not answer and the secret "
                "is not readable by this user",
                FixKind.TEXT,
                "run doctor as root",
            )
        )
    else:
        address = valid.decode("utf-8", "replace")
        smtp = (
            None
            if where is None
            else gather.smtp_facts(
                where,
                address,
                forge(address),
                postfix.expanded.get("myhostname") or "localhost",
                timeout,
            )
        )
        fix = checks_postfix.way_back(settings, postfix, mode)
        results.append(checks_postfix.bounce_path(smtp, fix))
    return results
