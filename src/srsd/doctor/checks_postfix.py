# doctor's checks of Postfix's wiring to srsd, the SRS domain and the bounce path: pure.
"""Judge Postfix's configuration (:class:`PostfixFacts`) against what ``srsd postfix-config``
prints for the mode in use (:func:`srsd.config.postfix.wiring`), and the SMTP dialogue
(:class:`SmtpFacts`) against what a bounce needs.

The mode in use is read from Postfix: the milter mode when a milter parameter names an srsd
endpoint, else the canonical mode when ``sender_canonical_maps`` names one. Each
map or milter parameter that names an srsd endpoint is checked for its role (swapped ports,
``tcp:`` on the socketmap or milter port, a socketmap map name, an unreachable socket or one a
chroot hides); each other step of the wiring is compared with the live value. Fixes are
``postconf`` commands that change only what is wrong, then ``postfix reload``.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence

from srsd.config import postfix
from srsd.config.postfix import Mode, Site, Step, split_list, wiring
from srsd.config.settings import Settings
from srsd.doctor.facts import EndpointRole, PostfixFacts, Service, SmtpFacts
from srsd.doctor.refs import (
    MAP_PARAMETERS,
    MILTER_PARAMETERS,
    ConfiguredEndpoint,
    Ref,
    chrooted,
    hit,
    opened_target,
    references,
    show_target,
)
from srsd.doctor.result import FixKind, Result

RELOAD = "postfix reload"
_KIND_OF = {
    EndpointRole.FORWARD: "tcp",
    EndpointRole.REVERSE: "tcp",
    EndpointRole.SOCKETMAP: "socketmap",
    EndpointRole.MILTER: "milter",
}
_WORDS = {
    EndpointRole.FORWARD: "tcp_table forward map",
    EndpointRole.REVERSE: "tcp_table reverse map",
    EndpointRole.SOCKETMAP: "socketmap",
    EndpointRole.MILTER: "milter",
}


def site(facts: PostfixFacts) -> Site:
    """What :func:`wiring` needs of this Postfix, from the gathered facts."""
    names = frozenset(
        item.lower()
        for param in ("mydestination", "virtual_mailbox_domains", "relay_domains")
        for item in split_list(facts.expanded.get(param, ""))
        if ":" not in item and not item.startswith(("/", "!"))
    )
    lists = {name: facts.raw[name] for name in postfix.LIST_DEFAULTS if name in facts.raw}
    return Site(
        facts.expanded.get("queue_directory", postfix.DEFAULT_QUEUE_DIRECTORY), lists, names
    )


def mode_in_use(facts: PostfixFacts, ours: list[ConfiguredEndpoint]) -> Mode | None:
    """The milter mode when a milter parameter names an srsd endpoint, the canonical mode when
    ``sender_canonical_maps`` names an srsd endpoint, else None (Postfix does not use srsd)."""
    refs = [(r, hit(r, facts, ours)) for r in references(facts) if r.where == "main.cf"]
    if any(r.param in MILTER_PARAMETERS and e is not None for r, e in refs):
        return Mode.MILTER  # even when it names the wrong endpoint: that is reported by role
    if any(r.param == "sender_canonical_maps" and e is not None for r, e in refs):
        return Mode.CANONICAL
    return None


def right_entries(settings: Settings, where: Site) -> dict[EndpointRole, str]:
    """srsd's forward, reverse and milter entries as ``srsd postfix-config`` writes them."""
    found: dict[EndpointRole, str] = {}
    try:
        steps = wiring(settings, Mode.CANONICAL, where)
    except postfix.WiringError:
        steps = []
    for step in steps:
        if step.name == "sender_canonical_maps":
            found[EndpointRole.FORWARD] = step.value
        elif step.name == "recipient_canonical_maps":
            found[EndpointRole.REVERSE] = step.value
    try:
        bare = Site(where.queue_directory, dict.fromkeys(MILTER_PARAMETERS, ""), where.domains)
        found[EndpointRole.MILTER] = next(
            s.value for s in wiring(settings, Mode.MILTER, bare) if s.name == "smtpd_milters"
        )
    except postfix.WiringError:
        pass
    return found


def _set(where: str, param: str, value: str) -> str:
    if where == "main.cf":
        return shlex.join(["postconf", "-e", f"{param} = {value}"])
    service = where.removeprefix("master.cf ")
    return shlex.join(["postconf", "-P", f"{service}/{param}={value}"])


def _replaced(value: str, entry: str, right: str) -> str:
    items = [right if item == entry else item for item in split_list(value)]
    return ", ".join(dict.fromkeys(item for item in items if item))


def _role_problem(
    ref: Ref, endpoint: ConfiguredEndpoint, wanted: EndpointRole | None
) -> str | None:
    """What is wrong with ``ref`` reaching ``endpoint`` where ``wanted`` is needed."""
    port = show_target(endpoint.target)
    if wanted is None:
        return (
            f"{ref.param} rewrites senders and recipients alike with one map, srsd's "
            f"{_WORDS[endpoint.role]} ({port}): use sender_canonical_maps and "
            "recipient_canonical_maps"
        )
    protocol = _KIND_OF[endpoint.role]
    if ref.kind != protocol:
        speaks = {"tcp": "tcp_table", "socketmap": "socketmap", "milter": "the milter protocol"}
        return (
            f"{ref.entry} speaks {speaks[ref.kind]} to srsd's {_WORDS[endpoint.role]} "
            f"({port}): every lookup fails (Postfix logs 'text longer than 4096' or a "
            "protocol error) and mail is deferred"
        )
    if endpoint.role is EndpointRole.SOCKETMAP:
        if ref.name != wanted.value:
            return (
                f"{ref.entry} asks srsd's socketmap for the map {ref.name!r} where "
                f"{ref.param} needs {wanted.value!r}"
            )
        return None
    if endpoint.role is not wanted:
        if {endpoint.role, wanted} == {EndpointRole.FORWARD, EndpointRole.REVERSE}:
            effect = (
                "senders are never rewritten, so forwarded mail fails SPF at the next hop"
                if wanted is EndpointRole.FORWARD
                else "recipients are SRS-encoded into unknown users and bounces to SRS "
                "addresses are never decoded: both are lost"
            )
            return (
                f"{ref.entry} is srsd's {endpoint.role.value} map, but {ref.param} needs the "
                f"{wanted.value} map: the ports are swapped, {effect}"
            )
        return (
            f"{ref.entry} is srsd's {_WORDS[endpoint.role]}, but {ref.param} needs its "
            f"{wanted.value}"
        )
    return None


def references_checks(
    facts: PostfixFacts, settings: Settings, ours: list[ConfiguredEndpoint]
) -> list[Result]:
    """Each Postfix parameter that names an srsd endpoint names the right one, reachably."""
    right = right_entries(settings, site(facts))
    results: list[Result] = []
    grouped: dict[tuple[str, str], list[tuple[Ref, ConfiguredEndpoint]]] = {}
    for ref in references(facts):
        endpoint = hit(ref, facts, ours)
        if endpoint is not None:
            grouped.setdefault((ref.where, ref.param), []).append((ref, endpoint))
    for (where, param), pairs in grouped.items():
        name = f"postfix:{param}" if where == "main.cf" else f"postfix:{where[10:]}/{param}"
        wanted = EndpointRole.MILTER if param in MILTER_PARAMETERS else MAP_PARAMETERS[param]
        values = (
            facts.raw
            if where == "main.cf"
            else next(
                s.overrides for s in facts.services if f"master.cf {s.name}/{s.type}" == where
            )
        )
        value = values.get(param, "")
        if not {ref.entry for ref, _ in pairs} <= set(split_list(value)):
            value = facts.expanded.get(param, "")  # named through a $variable: set it outright
        problems = []
        for ref, endpoint in pairs:
            problem = _role_problem(ref, endpoint, wanted)
            if problem is None:
                target = opened_target(ref.target, facts)
                error = facts.reachable.get(show_target(target))
                if error is not None:
                    problem = f"Postfix cannot reach {ref.entry} at {show_target(target)}: {error}"
                    if (
                        isinstance(ref.target, str)
                        and ref.target.startswith("/")
                        and chrooted(facts)
                    ):
                        problem += " (smtpd or cleanup run chrooted in the queue directory)"
            if problem is not None:
                problems.append(problem)
                fixed = right.get(wanted) if wanted is not None else None
                value = (
                    _replaced(value, ref.entry, fixed) if fixed else _replaced(value, ref.entry, "")
                )
        if problems:
            results.append(
                Result.fail(
                    name, "; ".join(problems), FixKind.SHELL, _set(where, param, value), RELOAD
                )
            )
        else:
            entries = ", ".join(ref.entry for ref, _ in pairs)
            results.append(Result.ok(name, f"{entries} reaches srsd's {pairs[0][1].role.value}"))
    return results


def _step_fix(steps: Sequence[Step]) -> tuple[str, ...]:
    return (*(shlex.join(s.argv) for s in steps), RELOAD)


def wiring_checks(
    facts: PostfixFacts, settings: Settings, ours: list[ConfiguredEndpoint], mode: Mode
) -> list[Result]:
    """The steps of ``srsd postfix-config`` for ``mode`` that the live Postfix lacks."""
    where = site(facts)
    try:
        steps = wiring(settings, mode, where)
    except postfix.WiringError as err:
        return [
            Result.fail("postfix-wiring", str(err), FixKind.TEXT, "see srsd postfix-config --help")
        ]
    refs = [(r, hit(r, facts, ours)) for r in references(facts)]
    services = {f"{s.name}/{s.type}": s for s in facts.services}
    results = []
    for step in steps:
        problem = _step_problem(step, facts, refs, services, settings.domain)
        if problem is not None and step.name in MAP_PARAMETERS:  # keep the tables there
            value = postfix.extended(facts.raw.get(step.name, ""), step.value)
            step = dataclasses.replace(step, value=value)  # noqa: PLW2901
        if problem is not None:
            status = Result.fail if step.kind == "main" or _needed(step, facts) else Result.warn
            results.append(
                status(f"postfix:{step.name}", problem, FixKind.SHELL, *_step_fix([step]))
            )
    return results


def _needed(step: Step, facts: PostfixFacts) -> bool:
    """A missing master.cf service that another service's ``cleanup_service_name`` names:
    that service's mail (local's forwards) is deferred until it exists."""
    service = step.name.partition("/")[0]
    return step.kind == "master" and any(
        s.overrides.get("cleanup_service_name") == service for s in facts.services
    )


def _step_problem(
    step: Step,
    facts: PostfixFacts,
    refs: list[tuple[Ref, ConfiguredEndpoint | None]],
    services: dict[str, Service],
    domain: str,
) -> str | None:
    if step.kind == "master":
        if step.name not in services:
            problem = f"master.cf has no {step.name} service: {step.why}"
            users = [
                f"{s.name}/{s.type}"
                for s in facts.services
                if s.overrides.get("cleanup_service_name") == step.name.partition("/")[0]
            ]
            if users:
                problem += f"; {', '.join(users)} hands its mail to it, which is deferred meanwhile"
            return problem
        return None
    if step.kind == "master_param":
        service, _, param = step.name.rpartition("/")
        found = services.get(service)
        live = found.overrides.get(param) if found is not None else None
        if param in MAP_PARAMETERS:
            if any(r.where == f"master.cf {service}" and r.param == param and e for r, e in refs):
                return None  # named; its role is checked with the other references
        elif live is not None and set(split_list(live)) == set(split_list(step.value)):
            return None
        return f"master.cf {service} lacks -o {param}={step.value}: {step.why}"
    name, wanted = step.name, step.value
    live = facts.expanded.get(name, "")
    if name in MAP_PARAMETERS or name in MILTER_PARAMETERS:
        if any(r.where == "main.cf" and r.param == name and e for r, e in refs):
            return None  # named; its role is checked with the other references
        return f"{name} does not use srsd ({name} = {live or '(empty)'}): {step.why}"
    if name.endswith("_classes"):
        have, need = set(split_list(live)), set(split_list(wanted))
        missing = sorted(need - have)
        extra = sorted({"header_sender"} & have - need)
        if extra:
            return (
                f"{name} includes header_sender: SRS addresses are written into From: and "
                "Sender:, so replies and DMARC break"
            )
        if missing:
            return f"{name} lacks {', '.join(missing)}: {step.why}"
        return None
    if name == "virtual_alias_domains":
        present = {i.lower() for i in split_list(live)}
        if domain.lower() in present:
            return None
        return f"the SRS domain is not in {name}: {step.why}"
    if live.strip() != wanted:
        return f"{name} = {live or '(empty)'}, not {wanted}: {step.why}"
    return None


def _own_domains(facts: PostfixFacts, settings: Settings) -> list[str]:
    """The domains this host delivers mail for: named domains of ``mydestination``,
    ``virtual_mailbox_domains`` and ``virtual_alias_domains``, without localhost names and
    the SRS domain."""
    found = []
    for param in ("mydestination", "virtual_mailbox_domains", "virtual_alias_domains"):
        for item in split_list(facts.expanded.get(param, "")):
            name = item.lower().rstrip(".")
            if ":" in name or name.startswith(("/", "!")) or "." not in name:
                continue
            if name.startswith("localhost") or name == settings.domain.lower():
                continue
            found.append(name)
    return list(dict.fromkeys(found))


def srs_domain(facts: PostfixFacts, settings: Settings) -> Result:
    """The SRS domain is a name of its own, not this host's name or a mailbox domain."""
    domain = settings.domain.lower()
    mailbox = {i.lower() for i in split_list(facts.expanded.get("virtual_mailbox_domains", ""))}
    hostname = facts.expanded.get("myhostname", "").lower()
    if domain not in (hostname, *mailbox):
        return Result.ok(
            "srs-domain", f"{settings.domain} is neither $myhostname nor a mailbox domain"
        )
    what = "this host's name ($myhostname)" if domain == hostname else "a mailbox domain"
    base = facts.expanded.get("mydomain", "").lower() or domain
    better = f"srs.{base}" if f"srs.{base}" != domain else f"srs.{domain}"
    return Result.fail(
        "srs-domain",
        f"the SRS domain {settings.domain} is {what}: SRS addresses and real mailboxes share one "
        "name, mail from its users is never rewritten, and its SPF and MX serve two purposes",
        FixKind.SETTINGS,
        f'domain = "{better}"   # a name for SRS only, with its own SPF and MX records',
    )


def exclusions(facts: PostfixFacts, settings: Settings) -> Result:
    """Canonical mode: the domains this host delivers are in ``exclude_domains``."""
    missing = [d for d in _own_domains(facts, settings) if d.encode() not in settings.excluded]
    if not missing:
        return Result.ok(
            "exclude-domains", "the domains this host delivers are excluded from rewriting"
        )
    entries = [*settings.excluded.entries(), *missing]
    listed = ", ".join(f'"{e}"' for e in entries)
    return Result.fail(
        "exclude-domains",
        f"sender_canonical_maps rewrites every sender, and {', '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} not in exclude_domains: mail from these domains "
        "leaves with an SRS sender (failing their own SPF and DMARC alignment), and mail to "
        "local mailboxes gets an SRS Return-Path",
        FixKind.SETTINGS,
        f"exclude_domains = [{listed}]",
    )


def way_back(settings: Settings, facts: PostfixFacts, mode: Mode) -> tuple[str, ...]:
    """The commands of ``srsd postfix-config`` that make smtpd take bounces to valid SRS
    addresses and refuse others (the same in both modes), then ``postfix reload``."""
    try:
        steps = wiring(settings, mode, site(facts))
    except postfix.WiringError as err:
        return (str(err),)
    names = ("recipient_canonical_maps", "recipient_canonical_classes", "virtual_alias_domains")
    return _step_fix([s for s in steps if s.name in names])


def bounce_path(facts: SmtpFacts | None, fix: Sequence[str]) -> Result:
    """smtpd takes a bounce to a fresh SRS address of ours (250) and refuses a forged one;
    ``fix``: the commands that wire the way back (:func:`way_back`)."""
    if facts is None:
        return Result.warn(
            "bounce-path",
            "master.cf has no smtpd service for mail from outside: the bounce path was not tried",
            FixKind.TEXT,
            "check master.cf's smtp inet service",
        )
    if facts.error is not None or facts.valid_reply is None or facts.forged_reply is None:
        return Result.fail(
            "bounce-path",
            f"this host's smtpd at {facts.where} did not complete the dialogue: "
            f"{facts.error or 'no reply to RCPT'}",
            FixKind.TEXT,
            "start Postfix (systemctl start postfix) and check its log",
        )
    code, text = facts.valid_reply
    if code // 100 != 2:
        cause = "srsd or Postfix is failing now" if code // 100 == 4 else "they would be refused"
        return Result.fail(
            "bounce-path",
            f"smtpd at {facts.where} answers a bounce to a fresh SRS address of ours {code} "
            f"{text}: {cause}, and the senders of forwarded mail never hear of non-delivery",
            FixKind.SHELL,
            *fix,
        )
    code, text = facts.forged_reply
    if code // 100 != 5:
        return Result.fail(
            "bounce-path",
            f"smtpd at {facts.where} answers a bounce to a forged SRS address {code} {text}, not "
            "550: forged bounces are taken in and then bounced again (backscatter)",
            FixKind.SHELL,
            *fix,
        )
    return Result.ok(
        "bounce-path",
        f"smtpd at {facts.where} accepts a bounce to a fresh SRS address of ours and refuses a "
        f"forged one ({code})",
    )
