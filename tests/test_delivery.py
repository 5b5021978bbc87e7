# Tests of local-delivery discovery: pure parsing, then real postconf/postmap on a main.cf.
"""Which recipients Postfix delivers here, asked of Debian's real ``postconf`` and
``postmap`` through ``MAIL_CONFIG`` pointing at a throw-away configuration directory (no
Postfix daemon needed), plus the pure parsing and key rules on their own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio

from srsd.config.postfix import split_list
from srsd.serve import delivery
from srsd.serve.delivery import PostfixDelivery, alias_keys, domain_keys
from srsd.srs.policy import DomainSet
from tests.harness.postfix import backdate, find_program

ALIASES = (
    "inline:{ fwd@mailbox.test=carol@dest.test, self@mailbox.test=self@mailbox.test,"
    " keep@mailbox.test=dave@mailbox.test, both@mailbox.test={dave@mailbox.test,"
    " carol@dest.test}, loop1@mailbox.test=loop2@mailbox.test,"
    " loop2@mailbox.test=loop1@mailbox.test, @catchall.test=erin@mailbox.test,"
    " bare@example.org=frank }"
)


def test_split_list_keeps_braces_whole() -> None:
    assert split_list("a, b\tc,,d") == ["a", "b", "c", "d"]
    assert split_list("hash:/x, inline:{ a=b, c={d, e} } z") == [
        "hash:/x",
        "inline:{ a=b, c={d, e} }",
        "z",
    ]


def test_keys_follow_postfix_search_order() -> None:
    assert alias_keys("u+x", "d.test", delimiters="+", local_domain=False) == [
        "u+x@d.test",
        "u@d.test",
        "@d.test",
    ]
    assert alias_keys("u", "d.test", delimiters="", local_domain=True) == [
        "u@d.test",
        "u",
        "@d.test",
    ]
    assert alias_keys("+x", "d.test", delimiters="+", local_domain=False) == [
        "+x@d.test",
        "@d.test",
    ]
    assert domain_keys("a.b.c") == ["a.b.c", ".b.c", ".c"]


@pytest.fixture
def postfix_dir(tmp_path: Path) -> Path:
    if find_program("postconf") is None or find_program("postmap") is None:
        pytest.fail("these tests need Debian's postfix (postconf, postmap)", pytrace=False)
    (tmp_path / "domains").write_text("# local domains\nfile.test  # a comment\n")
    (tmp_path / "vdomains").write_text("hashed.test OK\n")
    (tmp_path / "main.cf").write_text(
        "compatibility_level = 3.6\n"
        "myhostname = mx.example.org\nmydomain = example.org\n"
        "mydestination = $myhostname, example.org, !.bad.example.org, .example.org, "
        f"{tmp_path}/domains\n"
        f"virtual_mailbox_domains = mailbox.test, hash:{tmp_path}/vdomains\n"
        "recipient_delimiter = +\n"
        f"virtual_alias_maps = {ALIASES}\n"
    )
    backdate(tmp_path / "main.cf")
    subprocess.run(
        [find_program("postmap"), f"hash:{tmp_path}/vdomains"],
        check=True,
        env={**os.environ, "MAIL_CONFIG": str(tmp_path)},
    )
    return tmp_path


def delivered(view: PostfixDelivery, *recipients: bytes) -> bool:
    return trio.run(view.all_delivered_here, recipients)


@pytest.mark.parametrize(
    ("recipient", "here"),
    [
        (b"dave@mailbox.test", True),  # virtual mailbox domain
        (b"Dave+tag@MAILBOX.test", True),
        (b"x@hashed.test", True),  # virtual mailbox domain from a hash: table
        (b"root@mx.example.org", True),  # $myhostname
        (b"root@example.org", True),
        (b"a@sub.example.org", True),  # .example.org
        (b"a@x.bad.example.org", False),  # !.bad.example.org comes first
        (b"a@file.test", True),  # from the /path file
        (b"carol@dest.test", False),  # remote
        (b"fwd@mailbox.test", False),  # virtual alias to a remote address
        (b"fwd+tag@mailbox.test", False),  # the same, through recipient_delimiter
        (b"self@mailbox.test", True),  # alias to itself
        (b"keep@mailbox.test", True),  # alias to a local mailbox
        (b"both@mailbox.test", False),  # one local and one remote target
        (b"anyone@catchall.test", True),  # @domain catch-all to a local mailbox
        (b"bare@example.org", True),  # bare target: frank@$myorigin (mx.example.org)
        (b'"q u"@mailbox.test', True),
        (b"loop1@mailbox.test", False),  # nests too deep: unknown, so rewrite
        (b"postmaster", True),  # no domain: Postfix appends $myorigin (mx.example.org)
        (b"@example.org", False),  # no local part: cannot be known, so rewrite
        (b"a@[127.0.0.1]", False),
        (b'"fwd\r"@mailbox.test', False),  # control characters: cannot be looked up, rewrite
        (b'"a\tb"@mailbox.test', False),
    ],
)
def test_real_postfix_answers(postfix_dir: Path, recipient: bytes, here: bool) -> None:
    view = PostfixDelivery(environ={**os.environ, "MAIL_CONFIG": str(postfix_dir)})
    assert delivered(view, recipient) is here


def test_all_recipients_must_be_local_and_failures_mean_rewrite(postfix_dir: Path) -> None:
    view = PostfixDelivery(environ={**os.environ, "MAIL_CONFIG": str(postfix_dir)})
    assert delivered(view, b"dave@mailbox.test", b"keep@mailbox.test")
    assert not delivered(view, b"dave@mailbox.test", b"carol@dest.test")
    assert not delivered(view)  # no recipient: nothing is known, rewrite
    # A table Postfix cannot open: unknown, so the answer is "rewrite", counted.
    (postfix_dir / "vdomains.db").unlink()
    view = PostfixDelivery(environ={**os.environ, "MAIL_CONFIG": str(postfix_dir)})
    before = view.unknown
    assert not delivered(view, b"x@hashed.test")
    assert view.unknown == before + 1
    # No configuration at all: unknown as well.
    broken = PostfixDelivery(environ={**os.environ, "MAIL_CONFIG": str(postfix_dir / "none")})
    assert not delivered(broken, b"dave@mailbox.test") and broken.unknown == 1


def test_cache_and_refresh(postfix_dir: Path) -> None:
    view = PostfixDelivery(environ={**os.environ, "MAIL_CONFIG": str(postfix_dir)})
    assert not delivered(view, b"fwd@mailbox.test")
    main_cf = postfix_dir / "main.cf"
    main_cf.write_text(main_cf.read_text().replace(ALIASES, "inline:{ x@y=z@w }"))
    backdate(main_cf)
    assert not delivered(view, b"fwd@mailbox.test")  # still the cached configuration
    view = PostfixDelivery(environ={**os.environ, "MAIL_CONFIG": str(postfix_dir)})  # SIGHUP
    assert delivered(view, b"fwd@mailbox.test")


def test_fixed_local_domains_and_rewrite_local() -> None:
    view = PostfixDelivery(local_domains=DomainSet(["mailbox.test", ".example.org"]))
    assert delivered(view, b"fwd@mailbox.test", b"a@b.example.org")
    assert not delivered(view, b"a@dest.test")
    always = PostfixDelivery(rewrite_local=True)
    assert not delivered(always, b"dave@mailbox.test")


def test_slow_postmap_is_unknown(postfix_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = postfix_dir / "slow-postmap"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    monkeypatch.setattr(delivery, "COMMAND_TIMEOUT", 0.5)
    view = PostfixDelivery(environ={**os.environ, "MAIL_CONFIG": str(postfix_dir)})
    view.postmap = str(slow)
    assert not delivered(view, b"dave@mailbox.test") and view.unknown == 1


def test_the_answer_for_a_message_is_bounded(
    postfix_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each postmap within its own limit, but too many of them: unknown, so rewrite."""
    slowish = postfix_dir / "slowish-postmap"
    slowish.write_text(f'#!/bin/sh\nsleep 0.3\nexec {find_program("postmap")} "$@"\n')
    slowish.chmod(0o755)
    monkeypatch.setattr(delivery, "ANSWER_TIMEOUT", 0.5)
    view = PostfixDelivery(environ={**os.environ, "MAIL_CONFIG": str(postfix_dir)})
    view.postmap = str(slowish)
    many = [b"u%d@example.org" % i for i in range(5)]  # local, each a new alias lookup
    assert not delivered(view, *many) and view.unknown == 1
