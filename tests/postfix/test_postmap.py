# srsd's tcp_table maps queried by Postfix's own client: `postmap -q KEY tcp:127.0.0.1:PORT`.
"""``postmap -c CONFDIR -q KEY tcp:127.0.0.1:PORT`` against a running ``srsd serve``.

postmap is Postfix's real tcp_table client (``dict_tcp.c``): it %XX-encodes the key, parses
the reply the way every Postfix daemon does, and says which of three things happened:
found (value on stdout, exit 0), not found (no output, exit 1, nothing on stderr) or a lookup
error (exit 1 with ``postmap: fatal: ... query error`` or warnings on stderr). A clean stderr
therefore tells a proper ``500`` from a malformed reply, a ``400`` or a dropped connection.
postmap sends the key exactly as given (no RFC 5322 quoting, no case folding).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.harness.mail_flow import (
    SRS_DOMAIN,
    PostfixPrograms,
    day_stamp,
    expected_srs0_candidates,
    srs_hash,
    tamper_hash,
)
from tests.harness.postfix import backdate
from tests.harness.srsd_process import SrsdProcess

pytestmark = pytest.mark.postfix

# postmap retries a failing connection 10 times, 1 s apart: 30 s bounds even that.
POSTMAP_TIMEOUT = 30.0
SRS0_RE = re.compile(
    r'^"?SRS0=(?P<hash>[A-Za-z0-9_-]{4})=(?P<stamp>[A-Z2-7]{2})=(?P<host>[^=]+)=(?P<local>.+?)"?'
    + "@"
    + re.escape(SRS_DOMAIN)
    + "$"
)


@pytest.fixture(scope="module")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal main.cf for postmap (Debian's 'No configuration' install has none)."""
    d = tmp_path_factory.mktemp("postmap-conf")
    # compatibility_level silences "using backwards-compatible default setting" warnings;
    # smtputf8_enable makes the client check that keys and values are valid UTF-8, as
    # every Postfix daemon does by default.
    main_cf = d / "main.cf"
    main_cf.write_text("compatibility_level = 3.6\nsmtputf8_enable = yes\n")
    backdate(main_cf)
    return d


class Postmap:
    """Runs ``postmap -c CONFDIR -q`` against the forward and reverse maps."""

    def __init__(self, program: str, confdir: Path, server: SrsdProcess) -> None:
        self.program = program
        self.confdir = confdir
        self.server = server
        self.forward_map = f"tcp:{server.host}:{server.forward_port}"
        self.reverse_map = f"tcp:{server.host}:{server.reverse_port}"

    def run(
        self, args: Sequence[str], stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.program, "-c", str(self.confdir), *args],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=POSTMAP_TIMEOUT,
            check=False,
        )
        return subprocess.CompletedProcess(
            done.args,
            done.returncode,
            done.stdout.decode("utf-8", errors="surrogateescape"),
            done.stderr.decode("utf-8", errors="surrogateescape"),
        )

    def query(self, key: str, table: str) -> subprocess.CompletedProcess[str]:
        return self.run(["-q", key, table])

    def forward(self, key: str) -> subprocess.CompletedProcess[str]:
        return self.query(key, self.forward_map)

    def reverse(self, key: str) -> subprocess.CompletedProcess[str]:
        return self.query(key, self.reverse_map)

    def context(self, done: subprocess.CompletedProcess[str]) -> str:
        return (
            f"\n$ {' '.join(map(str, done.args))}\nexit {done.returncode}\n"
            f"stdout: {done.stdout!r}\nstderr: {done.stderr!r}\n"
            f"--- srsd log ---\n{self.server.log()}"
        )

    def found(self, done: subprocess.CompletedProcess[str]) -> str:
        """Assert a clean hit; return the value."""
        assert done.returncode == 0, "expected a hit" + self.context(done)
        assert done.stderr == "", "postmap warned" + self.context(done)
        assert done.stdout.endswith("\n"), self.context(done)
        value = done.stdout[:-1]
        assert value, self.context(done)
        assert "\n" not in value, self.context(done)
        return value

    def not_found(self, done: subprocess.CompletedProcess[str]) -> None:
        """Assert a clean miss: exit 1, no output, no warning (not a lookup error)."""
        assert done.returncode == 1, "expected not found" + self.context(done)
        assert done.stdout == "", "expected no value" + self.context(done)
        assert done.stderr == "", "a lookup error, not a clean not-found" + self.context(done)


@pytest.fixture(scope="module")
def postmap(postfix_programs: PostfixPrograms, confdir: Path, srsd_server: SrsdProcess) -> Postmap:
    return Postmap(postfix_programs.postmap, confdir, srsd_server)


# -- forward and reverse of an ordinary sender -----------------------------------------------


def test_forward_ordinary_sender_gives_srs0_at_forwarder(postmap: Postmap) -> None:
    start = time.time()
    done = postmap.forward("alice@origin.test")
    value = postmap.found(done)
    m = SRS0_RE.match(value)
    assert m, f"not an SRS0 address at {SRS_DOMAIN}: {value!r}" + postmap.context(done)
    assert (m["host"], m["local"]) == ("origin.test", "alice"), value
    assert m["stamp"] in {day_stamp(start), day_stamp(time.time())}, value
    assert value in expected_srs0_candidates("alice", "origin.test", start), (
        "wrong hash (HMAC-SHA1 over the lower-cased fields, base64url)" + postmap.context(done)
    )
    back = postmap.reverse(value)
    assert postmap.found(back) == "alice@origin.test", postmap.context(back)


def test_forward_keeps_case_and_reverse_accepts_lowercased(postmap: Postmap) -> None:
    """smtpd hands the reverse map lower-cased addresses; the case of the input is kept."""
    value = postmap.found(postmap.forward("Alice.Smith@Origin.Test"))
    m = SRS0_RE.match(value)
    assert m and (m["host"], m["local"]) == ("Origin.Test", "Alice.Smith"), value
    assert postmap.found(postmap.reverse(value)) == "Alice.Smith@Origin.Test"
    assert postmap.found(postmap.reverse(value.lower())) == "alice.smith@origin.test"
    assert postmap.found(postmap.reverse(value.upper())) == "ALICE.SMITH@ORIGIN.TEST"


def test_forward_of_foreign_srs0_gives_srs1_and_reverse_gives_it_back(postmap: Postmap) -> None:
    foreign = "SRS0=AbCd=JM=orig.example=u@hop1.example"
    value = postmap.found(postmap.forward(foreign))
    opaque = "=AbCd=JM=orig.example=u"
    assert value == f"SRS1={srs_hash('hop1.example', opaque)}=hop1.example={opaque}@{SRS_DOMAIN}"
    assert postmap.found(postmap.reverse(value)) == foreign


# -- odd characters through the real client (%XX encoding both ways) --------------------------


@pytest.mark.parametrize(
    ("sender", "local"),
    [
        pytest.param("alice+tag@origin.test", "alice+tag", id="plus-tag"),
        pytest.param("a%b@origin.test", "a%b", id="percent"),
        pytest.param("100%25@origin.test", "100%25", id="percent-hex-lookalike"),
        pytest.param("jörg@origin.test", "jörg", id="utf8"),
        pytest.param("o'brien@origin.test", "o'brien", id="apostrophe"),
        pytest.param("a=b@origin.test", "a=b", id="equals"),
    ],
)
def test_forward_and_reverse_of_dot_atom_senders(postmap: Postmap, sender: str, local: str) -> None:
    start = time.time()
    done = postmap.forward(sender)
    value = postmap.found(done)
    assert value in expected_srs0_candidates(local, "origin.test", start), postmap.context(done)
    assert postmap.found(postmap.reverse(value)) == sender


def test_quoted_sender_gets_a_quoted_srs_local_part(postmap: Postmap) -> None:
    """``"a b"@origin.test`` (cleanup's external form) → ``"SRS0=…=a b"@forwarder.test``.

    postsrsd answers ``SRS0=…="a b"@forwarder.test``, which Postfix re-parses into an
    address with an empty local part; srsd re-quotes the whole SRS local part.
    """
    start = time.time()
    done = postmap.forward('"a b"@origin.test')
    value = postmap.found(done)
    assert value in expected_srs0_candidates("a b", "origin.test", start, quoted=True), (
        postmap.context(done)
    )
    assert postmap.found(postmap.reverse(value)) == '"a b"@origin.test'
    # smtpd also tries the unquoted internal form, lower-cased; only "found" matters there
    # (the recipient is "known"), cleanup later reverses the quoted form.
    unquoted = value.replace('"', "")
    assert postmap.found(postmap.reverse(unquoted.lower())) in {
        '"a b"@origin.test',
        "a b@origin.test",
    }


@pytest.mark.parametrize(
    "sender",
    [
        pytest.param("a b@origin.test", id="raw-space"),
        pytest.param('"quoted\\"quote"@origin.test', id="escaped-quote"),
        pytest.param('stray"quote@origin.test', id="stray-quote"),
        pytest.param('"jörg müller"@origin.test', id="quoted-utf8"),
    ],
)
def test_odd_senders_round_trip(postmap: Postmap, sender: str) -> None:
    """Whatever the SRS form of an odd key, reversing it must give the sender back."""
    done = postmap.forward(sender)
    value = postmap.found(done)
    assert SRS0_RE.match(value), postmap.context(done)
    back = postmap.reverse(value)
    assert postmap.found(back) == sender, postmap.context(back)


@pytest.mark.parametrize("sender", ["tab\there@origin.test", "del\x7fhere@origin.test"])
def test_senders_with_control_characters_are_not_found(postmap: Postmap, sender: str) -> None:
    """No RFC 5321 address holds a control character (qtextSMTP and quoted-pairSMTP exclude
    them): every endpoint refuses one with the same reason, so Postfix keeps the sender."""
    postmap.not_found(postmap.forward(sender))


#: RFC 5321 section 4.1.2: Mailbox = Local-part "@" Domain, the local part a Dot-string or a
#: Quoted-string (qtextSMTP, quoted-pairSMTP); here the domain is the SRS domain.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
RFC5321_MAILBOX = re.compile(
    rf'(?:{_ATEXT}+(?:\.{_ATEXT}+)*|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*")@'
    + re.escape(SRS_DOMAIN)
    + r"\Z"
)


@pytest.mark.parametrize(
    ("sender", "srs_form"),
    [
        pytest.param("user@[192.0.2.1]", '"SRS0=', id="ipv4-literal"),
        pytest.param("user@[IPv6:2001:db8::1]", '"SRS0=', id="ipv6-literal"),
        pytest.param('""@origin.test', "SRS0=", id="empty-quoted-local-part"),
    ],
)
def test_answers_are_rfc5321_mailboxes_and_bounces_decode(
    postmap: Postmap, sender: str, srs_form: str
) -> None:
    """An address literal's '[', ']', ':' get the SRS local part quoted as a whole; an
    empty quoted local part comes back as '""' (README, "What srsd answers")."""
    done = postmap.forward(sender)
    value = postmap.found(done)
    assert value.startswith(srs_form), postmap.context(done)
    assert RFC5321_MAILBOX.match(value), f"not an RFC 5321 mailbox: {value!r}"
    for bounce in (value, value.lower()):  # smtpd looks recipients up lower-cased
        back = postmap.reverse(bounce)
        assert postmap.found(back) == (sender if bounce == value else sender.lower()), (
            postmap.context(back)
        )


@pytest.mark.parametrize("key", ["SRS0=abcd=JM=origin.test=alice@", "SRS0=abcd=JM=o.test=a"])
def test_srs_address_without_a_domain_is_not_found(postmap: Postmap, key: str) -> None:
    """With an empty domain or none, an SRS address is malformed, whatever its hash."""
    postmap.not_found(postmap.reverse(key))


def test_long_sender_just_fits_in_a_reply(postmap: Postmap) -> None:
    """A 4041-byte SRS address: within Postfix's 4096-byte reply limit, both ways."""
    sender = "a" * 4000 + "@origin.test"
    start = time.time()
    value = postmap.found(postmap.forward(sender))
    assert value in expected_srs0_candidates("a" * 4000, "origin.test", start)
    assert postmap.found(postmap.reverse(value)) == sender


def test_too_long_sender_is_a_clean_miss(postmap: Postmap) -> None:
    """Too long to answer: a 500, not a reply over 4096 bytes (Postfix retries those 10 times
    and then defers the mail). 5000 bytes is what a 1700-byte UTF-8 address (an SMTP command
    line holds 2048) becomes once %XX-encoded."""
    postmap.not_found(postmap.forward("a" * 5000 + "@origin.test"))
    postmap.not_found(postmap.reverse(f"SRS0=abcd=JM=origin.test={'a' * 5000}@{SRS_DOMAIN}"))


def test_too_long_key_is_answered_then_closed_cleanly(postmap: Postmap) -> None:
    """An over-long request gets its 500 and the server then closes, as the issue requires.

    The 500 must arrive intact: a close with unread input would send a reset that destroys
    it, and Postfix would re-send the lookup up to 10 times and defer the mail. The next
    lookup then finds the connection closed: Postfix reconnects with one "unexpected EOF"
    warning and a 1 s pause, and gets its answer.
    """
    keys = ["ö" * 1700 + "@origin.test", "alice@origin.test"]
    done = postmap.run(["-q", "-", postmap.forward_map], stdin="\n".join(keys).encode() + b"\n")
    assert done.returncode == 0, postmap.context(done)
    assert done.stdout.startswith("alice@origin.test\tSRS0="), postmap.context(done)
    assert "reset" not in done.stderr.lower(), postmap.context(done)
    assert "query error" not in done.stderr, postmap.context(done)
    warnings = [line for line in done.stderr.splitlines() if line.strip()]
    assert all("unexpected EOF" in line for line in warnings), postmap.context(done)


# -- not found: clean misses, never lookup errors ------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(f"postmaster@{SRS_DOMAIN}", id="srs-domain"),
        pytest.param("bob@FORWARDER.Test", id="srs-domain-case"),
        pytest.param(f"SRS0=abcd=JM=origin.test=alice@{SRS_DOMAIN}", id="own-srs-address"),
        pytest.param("no-at-sign", id="no-at-sign"),
        pytest.param('""', id="null-sender"),
    ],
)
def test_forward_not_found(postmap: Postmap, key: str) -> None:
    postmap.not_found(postmap.forward(key))


def test_forward_of_own_result_is_not_found(postmap: Postmap) -> None:
    """cleanup looks the result up again until a miss: srsd's own output must be a miss."""
    value = postmap.found(postmap.forward("alice@origin.test"))
    postmap.not_found(postmap.forward(value))


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("alice@origin.test", id="not-srs"),
        pytest.param(f"bob@{SRS_DOMAIN}", id="plain-in-srs-domain"),
        pytest.param(f"SRS0=garbage@{SRS_DOMAIN}", id="srs0-garbage"),
        pytest.param(f"SRS0@{SRS_DOMAIN}", id="bare-tag"),
        pytest.param(f"SRS0====@{SRS_DOMAIN}", id="empty-fields"),
        pytest.param(f"SRS0=abcd=JM=origin.test=alice@{SRS_DOMAIN}", id="bad-hash"),
        pytest.param(f"SRS0=abcd=JMJMJMJMJMJM=origin.test=alice@{SRS_DOMAIN}", id="long-stamp"),
        pytest.param(f"SRS0=ab=JM=origin.test=alice@{SRS_DOMAIN}", id="short-hash"),
        pytest.param(f"SRS1=abcd=hop.test==xyz=JM=o.test=u@{SRS_DOMAIN}", id="srs1-bad-hash"),
        pytest.param(f"SRS0=%zz=JM=origin.test=al ice@{SRS_DOMAIN}", id="percent-and-space"),
        pytest.param(f"SRS0=ab\x01d=JM=o.test=u@{SRS_DOMAIN}", id="control-byte"),
        pytest.param("SRS0=" + "x" * 3000 + f"@{SRS_DOMAIN}", id="long-line"),
        pytest.param("@@@", id="at-signs"),
        pytest.param(" ", id="space"),
    ],
)
def test_reverse_not_found(postmap: Postmap, key: str) -> None:
    postmap.not_found(postmap.reverse(key))


def test_reverse_of_stale_address_is_not_found(postmap: Postmap) -> None:
    """Correctly signed, but 30 days old (max_age is 21 days)."""
    stamp = day_stamp(time.time() - 30 * 86400)
    stale = f"SRS0={srs_hash(stamp, 'origin.test', 'alice')}={stamp}=origin.test=alice@{SRS_DOMAIN}"
    postmap.not_found(postmap.reverse(stale))


def test_reverse_of_tampered_address_is_not_found(postmap: Postmap) -> None:
    value = postmap.found(postmap.forward("alice@origin.test"))
    postmap.not_found(postmap.reverse(tamper_hash(value)))
    postmap.not_found(postmap.reverse(value.replace("=alice@", "=alicf@")))


# -- several keys on one connection -------------------------------------------------------


def _batch(postmap: Postmap, table: str, keys: Sequence[str]) -> dict[str, str]:
    """``postmap -q - TABLE < keys``: one connection, ``key<TAB>value`` per found key."""
    stdin = "".join(k + "\n" for k in keys).encode("utf-8")
    done = postmap.run(["-q", "-", table], stdin=stdin)
    assert done.stderr == "", postmap.context(done)
    assert done.returncode == 0, postmap.context(done)
    lines = done.stdout.splitlines()
    assert all(line.count("\t") == 1 for line in lines), postmap.context(done)
    return dict(line.split("\t", 1) for line in lines)


def test_many_keys_on_one_connection(postmap: Postmap) -> None:
    start = time.time()
    senders = ["alice@origin.test", "jörg@origin.test", "a+b@origin.test", "x%y@origin.test"]
    misses = [f"bob@{SRS_DOMAIN}", "", "nobody"]
    keys = [senders[0], misses[0], senders[1], misses[1], senders[2], misses[2], senders[3]]
    forwarded = _batch(postmap, postmap.forward_map, keys)
    assert set(forwarded) == set(senders), forwarded
    for sender, value in forwarded.items():
        local, _, host = sender.rpartition("@")
        assert value in expected_srs0_candidates(local, host, start), (sender, value)

    garbage = [
        f"SRS0=garbage@{SRS_DOMAIN}",
        "alice@origin.test",
        tamper_hash(forwarded[senders[0]]),
        "",
    ]
    reverse_keys = [k for pair in zip(forwarded.values(), garbage, strict=True) for k in pair]
    reversed_ = _batch(postmap, postmap.reverse_map, reverse_keys)
    assert reversed_ == {v: k for k, v in forwarded.items()}, reversed_
