# Mail address bytes: which are acceptable, splitting at the last "@", RFC 5322 quoting.
"""Pure helpers for the byte form of mail addresses as Postfix hands them over.

:func:`refusal` is the one declaration of what srsd accepts as an address at all: every
endpoint (tcp_table, socketmap, milter, ``srsd encode`` / ``decode``) refuses the same
bytes with the same reason, through :class:`srsd.srs.policy.Policy`.

Postfix gives canonical maps the *external* form of an address: a local part that is
not a dot-atom arrives quoted (``"a b"@example.org``). srsd unquotes such a local part
before it builds or reads an SRS address and quotes the result again, so that Postfix
can parse the answer (see ``docs/srs-format.md``, "Quoted local parts"). An unquoted
input gives an unquoted answer, byte-identical to postsrsd's, with two exceptions that
keep the answer a valid RFC 5321 mailbox (:func:`needs_quotes`): an empty local part
(``""@host``) and one holding an address literal's ``[``, ``]`` or ``:`` (unless it is a
quoted-string already, as postsrsd 1.x and Mail::SRS keep a quoted sender's quotes inside
the SRS address: ``SRS0=…=x.example="a:b"@D`` decodes to ``"a:b"@x.example``).
"""

from __future__ import annotations

# RFC 5322 atext, plus every byte >= 0x80 (RFC 6531: UTF-8 local parts are atoms).
_ATEXT = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
) | frozenset(range(0x80, 0x100))
#: Bytes an address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) brings into an SRS
#: local part: not atext, so such a local part is quoted as a whole (RFC 5321 Mailbox).
_LITERAL = b"[]:"
_QUOTE = 0x22  # "
_BACKSLASH = 0x5C  # \
#: Bytes no envelope address holds, quoted or not (RFC 5321: qtextSMTP and quoted-pairSMTP
#: are %d32-126, atext has no controls; RFC 6531 adds UTF-8 only): the C0 controls, NUL,
#: CR and LF among them, and DEL. Nothing srsd answers (a CHGFROM above all) may hold one.
CONTROLS = bytes(range(0x20)) + b"\x7f"
#: Default for the longest address accepted, in bytes (setting ``max_request``).
MAX_LENGTH = 4096
#: The reasons :func:`refusal` gives, word for word on every endpoint.
TOO_LONG = "Address too long"
NUL_BYTE = "NUL byte in address"
CONTROL_CHARACTER = "Control character in address"


def refusal(address: bytes, max_length: int) -> str | None:
    """Why ``address`` is no address srsd works on, or None when it is acceptable.

    Over ``max_length`` bytes: :data:`TOO_LONG` (checked first, so that a wire reader that
    gives up on a line too long for any acceptable address says the same); a NUL:
    :data:`NUL_BYTE`; any other of :data:`CONTROLS`: :data:`CONTROL_CHARACTER`.
    """
    if len(address) > max_length:
        return TOO_LONG
    if not has_control(address):
        return None
    return NUL_BYTE if 0 in address else CONTROL_CHARACTER


def has_control(data: bytes) -> bool:
    """Whether ``data`` holds any of :data:`CONTROLS`."""
    return len(data.translate(None, CONTROLS)) != len(data)


def split(address: bytes) -> tuple[bytes, bytes] | None:
    """Split ``address`` at its last ``@`` into (local part, domain); None without ``@``."""
    at = address.rfind(b"@")
    if at < 0:
        return None
    return address[:at], address[at + 1 :]


def is_dot_atom(local: bytes) -> bool:
    """True if ``local`` is a dot-atom: atext runs joined by single dots."""
    if not local:
        return False
    return all(atom and _ATEXT.issuperset(atom) for atom in local.split(b"."))


def unquote(local: bytes) -> bytes | None:
    """Return the content of a well-formed quoted-string, escapes resolved; else None.

    ``"a b"`` gives ``a b``; ``"a\\"b"`` gives ``a"b``. A local part with stray quotes
    (``a"b``, ``"a"b"``) is not a quoted-string and gives None: it is plain bytes.
    """
    if len(local) < 2 or local[0] != _QUOTE or local[-1] != _QUOTE:
        return None
    inner = local[1:-1]
    if _BACKSLASH not in inner:
        return None if _QUOTE in inner else inner
    out = bytearray()
    escaped = False
    for byte in inner:
        if escaped:
            out.append(byte)
            escaped = False
        elif byte == _BACKSLASH:
            escaped = True
        elif byte == _QUOTE:
            return None
        else:
            out.append(byte)
    return None if escaped else bytes(out)


def plain_local(local: bytes) -> tuple[bytes, bool]:
    """The local part as SRS works on it: (content, True) for a well-formed quoted-string,
    else (``local`` unchanged, False)."""
    inner = unquote(local)
    return (local, False) if inner is None else (inner, True)


def needs_quotes(local: bytes, *, was_quoted: bool) -> bool:
    """Whether an SRS answer's local part must be quoted: when the input was quoted, when
    it is empty (``""@host`` stays a mailbox) and when it holds an address literal's
    ``[``, ``]`` or ``:`` outside a quoted-string (``"a:b"``, a quoted sender inside an
    address postsrsd 1.x or Mail::SRS minted, is a mailbox local part already). Any other
    unquoted input gives unquoted bytes, as postsrsd's."""
    if was_quoted or not local:
        return True
    # translate() scans in C; a frozenset's isdisjoint makes an int object per byte
    return len(local.translate(None, _LITERAL)) != len(local) and unquote(local) is None


def quote(local: bytes) -> bytes:
    """Quote ``local`` as a whole unless it is a dot-atom (backslash before ``"`` and ``\\``)."""
    if is_dot_atom(local):
        return local
    escaped = local.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + escaped + b'"'
