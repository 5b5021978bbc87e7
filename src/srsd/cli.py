# The `srsd` command line: serve, encode, decode, keygen, config, health; shared settings flags.
"""Command-line entry point.

``srsd encode`` / ``srsd decode`` rewrite addresses given as arguments, or one per line
on standard input (streamed, raw bytes allowed), printing exactly one line per input: the
result, or the input unchanged when it is not rewritten (the reason goes to stderr), as
Postfix does with a "not found"; what no endpoint accepts as an address (a NUL, a control
character, more than ``max_request`` bytes) is refused with the same reason as on the
others (an ADDRESS argument holding a line break, which no output line can echo, is also a
usage error). Exit status: 0 when every input was rewritten, 1 when
any was not, 2 on usage or configuration errors. ``srsd health`` exits 0 when the running
server answers a forward + reverse round trip, 1 when it does not. ``srsd config`` prints
the effective configuration as TOML (``--changed``: only what is not at its default).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from srsd import __version__
from srsd.config import postfix, service_env, settings
from srsd.host import health
from srsd.host.logs import show
from srsd.host.programs import find_program
from srsd.srs import address
from srsd.srs.policy import Decision

EXIT_OK, EXIT_NOT_REWRITTEN, EXIT_USAGE = 0, 1, 2
# Settings flags every command takes; the server-only ones come with `serve` and `health`.
_COMMON = tuple(f for f in settings.FIELDS if f.common)
_SERVE = tuple(f for f in settings.FIELDS if not f.common)
DecideFn = Callable[[bytes, float], Decision]


def _add_settings(parser: argparse.ArgumentParser, fields: Iterable[settings.Field]) -> None:
    for f in fields:
        kwargs: dict[str, object] = {
            "dest": f.key,
            "help": f.help.replace("`", ""),
            "default": None,
        }
        if f.repeatable:
            kwargs["action"] = "append"
        if f.choices:
            kwargs["choices"] = f.choices
        if f.switch:
            kwargs.update(action="store_const", const="yes")
        parser.add_argument(f.flag, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every ``srsd`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help=f"TOML settings file (default: {settings.DEFAULT_CONFIG} when it exists)",
    )
    _add_settings(common, _COMMON)

    parser = argparse.ArgumentParser(
        prog="srsd",
        description="Sender Rewriting Scheme daemon "
        "for Postfix (tcp_table), compatible with postsrsd.",
    )
    parser.add_argument("--version", action="version", version=f"srsd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("encode", "rewrite senders into SRS addresses"),
        ("decode", "decode SRS addresses back to the original sender"),
    ):
        sub = commands.add_parser(
            name,
            parents=[common],
            help=text,
            description=text + "; with no ADDRESS, read one per line from stdin",
        )
        sub.add_argument("addresses", nargs="*", metavar="ADDRESS")
    keygen = commands.add_parser("keygen", help="write a new random secret to PATH (mode 0600)")
    keygen.add_argument("path", type=Path, metavar="PATH")
    keygen.add_argument("--force", action="store_true", help="replace an existing file")
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="run the server (tcp_table, socketmap, milter)",
        description="Answer Postfix's sender_canonical_maps (forward) and "
        "recipient_canonical_maps (reverse) over tcp_table and socketmap, and its milters, "
        "at the endpoints the settings name.",
    )
    _add_settings(serve, _SERVE)
    serve.add_argument("--check", action="store_true", help="validate the configuration and exit")
    config = commands.add_parser(
        "config",
        parents=[common],
        help="print the effective configuration as TOML",
        description="Print every setting as TOML that --config accepts, each with a comment "
        "naming where its value came from (default, file, environment variable, flag). "
        "Secrets are never printed.",
    )
    _add_settings(config, _SERVE)
    config.add_argument(
        "--changed",
        action="store_true",
        help="only settings not at their default (like postconf -n)",
    )
    health = commands.add_parser(
        "health",
        parents=[common],
        help="probe the running server: forward + reverse, the milter",
        description="Connect to the endpoints the settings name, rewrite a probe address and "
        "decode it back, negotiate with the milter and abort a test message; print one line; "
        "exit 0 when healthy, 1 when not.",
    )
    _add_settings(health, _SERVE)
    health.add_argument(
        "--probe-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds to wait for each answer (default 5)",
    )
    wiring = commands.add_parser(
        "postfix-config",
        parents=[common],
        help="print the postconf commands that wire Postfix to srsd",
        description="Print the postconf commands (main.cf and master.cf) that connect Postfix "
        "to the endpoints the settings name, each with a comment saying why: pipe them into sh "
        "and run postfix reload. --mode milter rewrites only mail that leaves this host; the "
        "default is milter when a milter endpoint is configured, else canonical.",
    )
    _add_settings(wiring, _SERVE)
    wiring.add_argument(
        "--mode", choices=[m.value for m in postfix.Mode], help="canonical or milter"
    )
    doctor = commands.add_parser(
        "doctor",
        parents=[common],
        help="check that SRS works on this host end to end, and say how to fix what does not",
        description="Read-only: probe srsd's endpoints and secret, Postfix's wiring (postconf, "
        "MAIL_CONFIG honoured), the bounce path through smtpd (no mail is sent), the SRS "
        "domain's SPF, MX and DMARC, and the clock. One line per check: ✓ works, ! works but "
        "risky, ✗ broken, each ! and ✗ with its fix. Exit 0 when nothing is ✗, else 1.",
    )
    _add_settings(doctor, _SERVE)
    doctor.add_argument("--json", action="store_true", help="print the results as JSON")
    doctor.add_argument(
        "--probe-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds to wait for each answer (default 5)",
    )
    return parser


def cli_values(args: argparse.Namespace) -> dict[str, object]:
    """The settings given on the command line, by key (absent ones left out)."""
    values = {
        f.key: getattr(args, f.key)
        for f in settings.FIELDS
        if getattr(args, f.key, None) is not None
    }
    for f in settings.FIELDS:  # --exclude a.com --exclude b.com,c.com
        if f.repeatable and f.key in values:
            values[f.key] = " ".join(values[f.key])
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``srsd`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "keygen":
        return _keygen(args.path, args.force)
    if args.command == "doctor":
        return _doctor(args)
    try:
        probe = args.command == "health"  # finds what the unit's srsd uses; no domain, no secret
        wire = args.command == "postfix-config"  # the same, with the domain
        environ = service_env.service_environment(os.environ) if probe or wire else None
        loaded = settings.load(
            cli_values(args),
            config=args.config,
            environ=environ,
            create_secret=args.command == "serve" and not args.check,
            need_secrets=not (probe or wire),
            need_domain=not probe,
        )
    except settings.ConfigError as err:
        print(f"srsd: configuration error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "serve":
        from srsd.serve import server  # noqa: PLC0415  (trio is only needed to serve)

        reloaded = service_env.ReloadEnvironment(os.environ)  # re-reads /etc/default/srsd
        return server.run(
            loaded,
            lambda: settings.load(cli_values(args), config=args.config, environ=reloaded()),
            check=args.check,
        )
    if args.command == "health":
        healthy, line = health.check(loaded, args.probe_timeout)
        print(line)
        return EXIT_OK if healthy else EXIT_NOT_REWRITTEN
    for warning in loaded.warnings:
        print(f"srsd: warning: {warning}", file=sys.stderr)
    if wire:
        return _postfix_config(loaded, args.mode)
    if args.command == "config":
        from srsd.config.render import effective_config  # noqa: PLC0415

        sys.stdout.write(effective_config(loaded, changed=args.changed))
        return EXIT_OK
    for broken in (a for a in map(os.fsencode, args.addresses) if b"\n" in a):
        # Refused as every endpoint refuses it, and a usage error: no line can echo it.
        reason = address.refusal(broken, loaded.max_request)
        print(f"srsd {args.command}: {show(broken)}: not rewritten: {reason}", file=sys.stderr)
        return EXIT_USAGE
    # Die quietly like cat(1) when the reader of our output goes away (`| head -1`).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    policy = loaded.policy()
    decide = policy.forward if args.command == "encode" else policy.reverse
    inputs = [os.fsencode(a) for a in args.addresses] or _stdin_lines()
    return _rewrite_all(inputs, decide, args.command)


def _stdin_lines() -> Iterator[bytes]:
    for line in sys.stdin.buffer:
        yield line.removesuffix(b"\n").removesuffix(b"\r")


def _rewrite_all(inputs: Iterable[bytes], decide: DecideFn, command: str) -> int:
    out = sys.stdout.buffer
    status = EXIT_OK
    for item in inputs:
        decision = decide(item, time.time())
        if decision.value is None:
            status = EXIT_NOT_REWRITTEN
            reason = decision.reason
            print(f"srsd {command}: {show(item)}: not rewritten: {reason}", file=sys.stderr)
            out.write(item + b"\n")
        else:
            out.write(decision.value + b"\n")
        out.flush()  # one answer per line as it comes: usable as a co-process
    return status


def _doctor(args: argparse.Namespace) -> int:
    """``srsd doctor``: settings as ``srsd health`` reads them; a broken one is a ✗ result."""
    from srsd.doctor import result, run  # noqa: PLC0415

    try:
        loaded = settings.load(
            cli_values(args),
            config=args.config,
            environ=service_env.service_environment(os.environ),
            need_secrets=False,  # doctor reads the secret itself, and says when it cannot
            need_domain=False,
        )
    except settings.ConfigError as err:
        results = [
            result.Result.fail(
                "settings",
                f"srsd's configuration is unusable: {err}",
                result.FixKind.TEXT,
                "correct it; srsd serve --check must pass",
            )
        ]
    else:
        results = run.run(loaded, args.probe_timeout)
    render = result.render_json if args.json else result.render_text
    sys.stdout.write(render(results))
    return EXIT_OK if result.healthy(results) else EXIT_NOT_REWRITTEN


def _keygen(path: Path, force: bool) -> int:
    if path.exists() and not force:
        print(f"srsd keygen: {path} exists; use --force to replace it", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings.write_new_secret(path, force=force)
    except OSError as err:
        print(f"srsd keygen: cannot write {path}: {err.strerror}", file=sys.stderr)
        return EXIT_USAGE
    print(f"srsd keygen: wrote a new secret to {path} (mode 0600)", file=sys.stderr)
    return EXIT_OK


def _postfix_config(loaded: settings.Settings, mode_name: str | None) -> int:
    if mode_name is None:
        mode = postfix.Mode.MILTER if loaded.milter is not None else postfix.Mode.CANONICAL
    else:
        mode = postfix.Mode(mode_name)
    site, problem = live_site(os.environ)
    if problem:
        print(f"srsd postfix-config: {problem}; assuming Postfix's defaults", file=sys.stderr)
    try:
        steps = postfix.wiring(loaded, mode, site)
    except postfix.WiringError as err:
        print(f"srsd postfix-config: {err}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(postfix.preamble(mode, loaded) + postfix.script(steps))
    return EXIT_OK


def live_site(environ: Mapping[str, str]) -> tuple[postfix.Site, str]:
    """What :func:`srsd.config.postfix.wiring` needs of the Postfix whose configuration
    ``postconf`` reads (``MAIL_CONFIG`` in ``environ``, else its default); Postfix's defaults
    and the reason when it cannot be asked."""
    lists = list(postfix.LIST_DEFAULTS)
    domains = ("mydestination", "virtual_mailbox_domains", "relay_domains")
    try:
        plain = _postconf(["-h", *lists], environ)
        queue, *expanded = _postconf(["-xh", "queue_directory", *domains], environ)
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        return postfix.Site(), f"cannot ask postconf ({err})"
    names = {
        item.lower()
        for value in expanded
        for item in postfix.split_list(value)
        if ":" not in item and not item.startswith(("/", "!"))
    }
    return postfix.Site(queue, dict(zip(lists, plain, strict=True)), frozenset(names)), ""


def _postconf(args: list[str], environ: Mapping[str, str]) -> list[str]:
    program = find_program("postconf", environ)
    if program is None:
        raise ValueError("postconf not found")
    done = subprocess.run(
        [program, *args], env=dict(environ), capture_output=True, text=True, timeout=30, check=True
    )
    values = done.stdout.split("\n")[: len(args) - 1]
    if len(values) != len(args) - 1:
        raise ValueError(f"postconf printed {done.stdout!r}")
    return values
