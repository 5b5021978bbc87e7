# doctor's gatherers: read the secret, probe srsd's endpoints, ask postconf, talk to smtpd.
"""The I/O half of ``srsd doctor``: each function reads one part of the host into a fact
(:mod:`srsd.doctor.facts`) and never raises for what it cannot read; the error goes into the
fact. Nothing here changes anything or sends mail: the SMTP dialogue ends with ``RSET`` and
``QUIT`` before any ``DATA``.

Endpoints are asked the way ``srsd health`` asks them (its public probes are reused: the
milter gets a negotiation and a test message it aborts), and one that does not answer on TCP
gets the program holding its port named when that is not srsd (:mod:`srsd.host.holders`);
Postfix with ``postconf`` as this user, so ``MAIL_CONFIG`` applies as it does to Postfix's own
commands; an installed ``srsd.service`` (and its drop-ins) for the source of its
``LoadCredential=srsd-secrets:`` (:func:`credential_facts`).
"""

from __future__ import annotations

import ctypes
import grp
import ipaddress
import json
import os
import pwd
import smtplib
import socket
import subprocess
from pathlib import Path

from srsd.config.settings import ConfigError, Settings, read_secrets
from srsd.doctor.facts import (
    ClockFacts,
    ClockState,
    CredentialFacts,
    EndpointFacts,
    EndpointRole,
    Lookup,
    PostfixFacts,
    SecretFacts,
    Service,
    SmtpFacts,
)
from srsd.doctor.refs import (
    ConfiguredEndpoint,
    Target,
    chrooted,
    hit,
    opened_target,
    references,
    show_target,
)
from srsd.host import health, holders
from srsd.host.programs import find_program
from srsd.host.systemd import SECRETS_CREDENTIAL
from srsd.wire import host_port

#: Parameters doctor reads with ``postconf``.
PARAMETERS = (
    "config_directory",
    "queue_directory",
    "mail_owner",
    "sender_canonical_maps",
    "sender_canonical_classes",
    "recipient_canonical_maps",
    "recipient_canonical_classes",
    "canonical_maps",
    "local_recipient_maps",
    "relay_recipient_maps",
    "smtpd_milters",
    "non_smtpd_milters",
    "milter_protocol",
    "milter_default_action",
    "myhostname",
    "mydomain",
    "mydestination",
    "virtual_mailbox_domains",
    "virtual_alias_domains",
    "relay_domains",
    "inet_interfaces",
    "smtp_bind_address",
    "smtp_bind_address6",
)
COMMAND_TIMEOUT = 30.0
_OUTPUT_LIMIT = 1 << 20
_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronized


def secret_facts(settings: Settings) -> SecretFacts:
    """The secrets file's mode and owner, and its secrets when this user may read them."""
    path = settings.secrets_file
    try:
        info = path.stat()
    except OSError as err:
        missing = isinstance(err, FileNotFoundError)
        return SecretFacts(path, error=err.strerror or str(err), missing=missing)
    owner, group = _user_name(info.st_uid), _group_name(info.st_gid)
    try:
        secrets, _ = read_secrets(path)
    except ConfigError as err:
        return SecretFacts(path, info.st_mode & 0o7777, owner, group, error=str(err))
    return SecretFacts(path, info.st_mode & 0o7777, owner, group, secrets)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def probe_endpoint(
    endpoint: ConfiguredEndpoint, fresh: bytes | None, timeout: float
) -> EndpointFacts:
    """Ask ``endpoint`` what Postfix would: the forward map a probe sender, the reverse map
    ``fresh`` (an SRS address of ours, when known), the socketmap both, the milter what
    ``srsd health`` asks it."""
    lookups: list[Lookup] = []
    try:
        if endpoint.role is EndpointRole.FORWARD:
            code, answer = health.tcp_lookup(_inet(endpoint.target), health.PROBE, timeout)
            lookups.append(Lookup(health.PROBE, str(code), answer))
        elif endpoint.role is EndpointRole.REVERSE:
            asked = fresh or b"not-an-srs-address@doctor.invalid"
            code, answer = health.tcp_lookup(_inet(endpoint.target), asked, timeout)
            lookups.append(Lookup(asked, str(code), answer))
        elif endpoint.role is EndpointRole.SOCKETMAP:
            with health.connect(endpoint.target, timeout) as sock:
                status, answer = health.socketmap_lookup(sock, b"forward " + health.PROBE)
                lookups.append(Lookup(b"forward " + health.PROBE, status.decode(), answer))
                asked = b"reverse " + (answer if status == b"OK" else fresh or b"x@doctor.invalid")
                status, answer = health.socketmap_lookup(sock, asked)
                lookups.append(Lookup(asked, status.decode(), answer))
        else:
            said = health.probe_milter(endpoint.target, timeout)  # as srsd health probes it
            lookups.append(Lookup(b"negotiate", "ok", said.encode()))
    except (OSError, health.ProbeError, ValueError) as err:
        holder = ""
        if isinstance(endpoint.target, tuple):
            holder = holders.held_by_another(endpoint.target[1])
        return EndpointFacts(endpoint.role, endpoint.where, tuple(lookups), _reason(err), holder)
    return EndpointFacts(endpoint.role, endpoint.where, tuple(lookups))


def _inet(target: Target) -> tuple[str, int]:
    if isinstance(target, str):
        raise ValueError(f"a tcp_table endpoint cannot be a unix socket: {target}")
    return target


def _program(name: str) -> str:
    """A Postfix program (:func:`find_program`), or its bare name (the error then says so)."""
    return find_program(name) or name


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def postfix_facts(ours: list[ConfiguredEndpoint], timeout: float = COMMAND_TIMEOUT) -> PostfixFacts:
    """Postfix's parameters (as written and expanded), its master.cf services, and whether
    each srsd endpoint Postfix names can be reached where its daemons will look."""
    postconf = _program("postconf")
    try:
        raw = _postconf([postconf, "-h", *PARAMETERS], timeout)
        expanded = _postconf([postconf, "-xh", *PARAMETERS], timeout)
        services_text = _run([postconf, "-M"], timeout)
        overrides_text = _run([postconf, "-P"], timeout)
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        where = os.environ.get("MAIL_CONFIG", "the default configuration directory")
        return PostfixFacts(where, error=f"postconf failed ({where}): {_reason(err)}")
    overrides: dict[tuple[str, str], dict[str, str]] = {}
    for line in overrides_text.splitlines():
        key, sep, value = line.partition(" = ")
        name, _, rest = key.partition("/")
        kind, _, param = rest.partition("/")
        if sep and param:
            overrides.setdefault((name, kind), {})[param] = value.strip()
    services = []
    for line in services_text.splitlines():
        fields = line.split()
        if len(fields) >= 8:
            services.append(
                Service(
                    fields[0],
                    fields[1],
                    fields[4] == "y",
                    fields[7],
                    overrides.get((fields[0], fields[1]), {}),
                )
            )
    facts = PostfixFacts(raw["config_directory"], raw, expanded, tuple(services))
    reachable: dict[str, str | None] = {}
    for ref in references(facts):
        if hit(ref, facts, ours) is None:
            continue
        key = show_target(opened_target(ref.target, facts))
        if key not in reachable:
            reachable[key] = _reachable(ref.target, facts, timeout)
    return PostfixFacts(facts.config_dir, raw, expanded, facts.services, reachable)


def _postconf(args: list[str], timeout: float) -> dict[str, str]:
    lines = _run(args, timeout).splitlines()
    if len(lines) != len(PARAMETERS):
        raise ValueError(f"postconf printed {len(lines)} lines for {len(PARAMETERS)} parameters")
    return dict(zip(PARAMETERS, (line.strip() for line in lines), strict=True))


def _run(args: list[str], timeout: float) -> str:
    done = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
    errors = done.stderr.decode("utf-8", "replace").strip().splitlines()
    fatal = [line for line in errors if "fatal:" in line]
    if done.returncode != 0 or fatal:
        raise ValueError((fatal or errors or [f"exit status {done.returncode}"])[-1])
    return done.stdout[:_OUTPUT_LIMIT].decode("utf-8", "replace")


def _reachable(target: Target, facts: PostfixFacts, timeout: float) -> str | None:
    """None when Postfix's daemons can connect to ``target``, else why not. As root, a unix
    socket is tried the way they try it: in a child that enters the queue directory (chroot
    when smtpd or cleanup runs chrooted), becomes ``mail_owner`` and connects to the path as
    written; otherwise the path they would open is tried as this user."""
    if isinstance(target, str) and os.geteuid() == 0:
        owner = facts.raw.get("mail_owner") or "postfix"
        try:
            user = pwd.getpwnam(owner)
        except KeyError:
            return f"Postfix's mail_owner {owner} does not exist"
        queue = facts.expanded.get("queue_directory", "/var/spool/postfix")
        return _connect_as(
            user.pw_uid, user.pw_gid, queue, chroot=chrooted(facts), path=target, timeout=timeout
        )
    try:
        health.connect(opened_target(target, facts), timeout).close()
    except OSError as err:
        return _reason(err)
    return None


def _connect_as(
    uid: int, gid: int, queue: str, *, chroot: bool, path: str, timeout: float
) -> str | None:
    """Connect to the unix socket ``path`` from ``queue`` (chrooted there when ``chroot``) in a
    child process running as ``uid``/``gid``; its exit status is the errno."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.chdir(queue)
            if chroot:
                os.chroot(queue)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            health.connect(path, timeout).close()
        except OSError as err:
            code = err.errno or 255
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return None
    return os.strerror(code) if 0 < code < 255 else "cannot connect"


def smtpd_address(facts: PostfixFacts) -> tuple[str, int] | None:
    """Where this host's smtpd listens for mail from outside: the ``smtp`` service (port 25)
    or a ``HOST:PORT`` inet smtpd service, on loopback when it listens on every address."""
    candidates = []
    interfaces = facts.expanded.get("inet_interfaces", "all").replace(",", " ").split()
    default_host = "127.0.0.1"
    if interfaces and interfaces[0] not in ("all", "loopback-only", "localhost"):
        default_host = interfaces[0].removeprefix("[").removesuffix("]")
    for service in facts.services:
        if service.type != "inet" or service.command != "smtpd":
            continue
        host, _, port = service.name.rpartition(":")
        host = host.removeprefix("[").removesuffix("]") or default_host
        number = 25 if port == "smtp" else int(port) if port.isdigit() else None
        if number is not None and number not in (465, 587):
            candidates.append((number != 25, (host, number)))
    return min(candidates)[1] if candidates else None


def smtp_facts(
    where: tuple[str, int], valid: str, forged: str, helo: str, timeout: float
) -> SmtpFacts:
    """``EHLO``, ``MAIL FROM:<>``, ``RCPT TO:<valid>``, ``RSET``, ``MAIL FROM:<>``,
    ``RCPT TO:<forged>``, ``RSET``, ``QUIT``: the replies a bounce would get."""
    shown = host_port(*where)
    replies: list[tuple[int, str]] = []
    try:
        with smtplib.SMTP(where[0], where[1], local_hostname=helo, timeout=timeout) as smtp:
            smtp.ehlo()
            for recipient in (valid, forged):
                code, text = smtp.mail("")
                if code != 250:
                    replies.append((code, f"MAIL FROM:<> refused: {text.decode(errors='replace')}"))
                else:
                    code, text = smtp.rcpt(recipient)
                    replies.append((code, text.decode("utf-8", "replace")))
                smtp.rset()
    except (OSError, smtplib.SMTPException) as err:
        return SmtpFacts(shown, valid, None, forged, None, _reason(err))
    return SmtpFacts(shown, valid, replies[0], forged, replies[1])


def clock_facts() -> ClockFacts:
    """The kernel's view: adjtimex(2) with no change returns TIME_ERROR while the clock is
    not synchronized (no NTP client, or one that has not yet synchronized it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buffer = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        state = libc.adjtimex(buffer)
    except (OSError, AttributeError) as err:
        return ClockFacts(ClockState.UNKNOWN, f"adjtimex: {_reason(err)}")
    if state < 0:
        return ClockFacts(ClockState.UNKNOWN, f"adjtimex: {os.strerror(ctypes.get_errno())}")
    if state == _TIME_ERROR:
        return ClockFacts(ClockState.UNSYNCHRONIZED, "adjtimex")
    return ClockFacts(ClockState.SYNCHRONIZED, "adjtimex")


def host_addresses(timeout: float = COMMAND_TIMEOUT) -> tuple[str, ...]:
    """Every address configured on this host's interfaces (``ip -j address``), else those
    its name resolves to."""
    try:
        out = _run([_program("ip"), "-j", "address"], timeout)
        found = [
            str(ipaddress.ip_address(info["local"]))
            for link in json.loads(out)
            for info in link.get("addr_info", [])
            if "local" in info
        ]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        try:
            found = [str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None)]
        except OSError:
            found = []
    return tuple(dict.fromkeys(found))


def sending_addresses(
    settings: Settings, postfix: PostfixFacts, host: tuple[str, ...]
) -> tuple[tuple[str, ...], str]:
    """The addresses mail leaves from, and where that came from: ``sending_addresses``, else
    ``smtp_bind_address``/``smtp_bind_address6``, else the host's global addresses."""
    if settings.sending_addresses:
        return settings.sending_addresses, "sending_addresses"
    bound = tuple(
        a
        for a in (
            postfix.expanded.get("smtp_bind_address", ""),
            postfix.expanded.get("smtp_bind_address6", ""),
        )
        if a
    )
    if bound:
        return bound, "smtp_bind_address"
    return tuple(
        a for a in host if ipaddress.ip_address(a).is_global
    ), "this host's global addresses"


def environment_user() -> str:
    """Who runs doctor, for messages about what it could not read."""
    return _user_name(os.geteuid())


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # not ours to look into: as if absent
        return False


def _drop_ins(directory: Path) -> list[Path]:
    try:
        return sorted(directory.glob("*.conf"))
    except OSError:
        return []


#: Where systemd looks for srsd.service and its drop-ins (``srsd.service.d/*.conf``), in
#: systemd's order of precedence (systemd.unit(5)).
UNIT_DIRECTORIES = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
UNIT = "srsd.service"


def credential_facts(directories: tuple[str, ...] | None = None) -> CredentialFacts | None:
    """The source of the unit's ``LoadCredential=srsd-secrets:...`` (the last one set, drop-ins
    after the unit file), and whether root can read it as systemd will at start; None when
    no srsd.service is installed or it loads no such credential."""
    dirs = [Path(d) for d in (UNIT_DIRECTORIES if directories is None else directories)]
    unit = next((d / UNIT for d in dirs if _is_file(d / UNIT)), None)
    if unit is None:
        return None
    drop_ins = sorted(
        {p.name: p for d in reversed(dirs) for p in _drop_ins(d / f"{UNIT}.d")}.items()
    )
    source = None
    where = unit
    for path in [unit, *(p for _, p in drop_ins)]:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if not sep or key.strip() != "LoadCredential":
                continue
            name, _, path_text = value.strip().partition(":")
            if not value.strip():
                source = None  # an empty assignment resets the list
            elif name == SECRETS_CREDENTIAL:
                source, where = path_text, path
    if not source or not source.startswith("/"):
        return None  # none, or one from systemd's credential store
    try:
        with open(source, "rb"):
            pass
    except FileNotFoundError:
        return CredentialFacts(str(where), source, "it does not exist", missing=True)
    except OSError as err:
        return CredentialFacts(str(where), source, _reason(err), checked=os.geteuid() == 0)
    return CredentialFacts(str(where), source)
