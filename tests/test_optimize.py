# Under python -O the codec still rejects forged, tampered, expired and malformed addresses.
"""pysrs does all its validation with ``assert``, so under ``python -O`` it accepts every
forgery (research ``srs-libraries.md`` §2.5 bug 2). These tests run the codec in a child
``python -O`` process whose checks do not use ``assert``, and scan srsd's sources for
``assert`` statements."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import srsd

SRC = Path(srsd.__file__).resolve().parent

# Runs in the child. Every check is an explicit comparison, never an assert.
CHILD = r"""
import base64, hashlib, hmac, json, sys
from srsd.srs.codec import Alphabet, Codec, SRSError
from srsd.srs.policy import Outcome, Policy

NOW, DAY, SECRET, DOMAIN = 1704110400, 86400, b"Vector-Secret-1", b"forwarder.test"
srs = Codec([SECRET], DOMAIN, alphabet=Alphabet.BASE64)

def signed(stamp, host=b"example.com", user=b"user", secret=SECRET):
    msg = (stamp + host + user).lower()
    h = base64.b64encode(hmac.new(secret, msg, hashlib.sha1).digest())[:4]
    return b"SRS0=" + h + b"=" + stamp + b"=" + host + b"=" + user + b"@" + DOMAIN

GOOD = b"SRS0=S3fv=IL=example.com=user@forwarder.test"
FORGED = {
    "zero hash": b"SRS0=0000=IL=example.com=user@forwarder.test",
    "tampered hash": b"SRS0=S3fw=IL=example.com=user@forwarder.test",
    "tampered user": b"SRS0=S3fv=IL=example.com=admin@forwarder.test",
    "tampered host": b"SRS0=S3fv=IL=evil.example=user@forwarder.test",
    "tampered stamp": b"SRS0=S3fv=IK=example.com=user@forwarder.test",
    "other secret": signed(b"IL", secret=b"not-our-secret"),
    "short hash": b"SRS0=S3f=IL=example.com=user@forwarder.test",
    "empty hash": b"SRS0==IL=example.com=user@forwarder.test",
    "hash over 27": b"SRS0=" + b"S3fv" * 7 + b"=IL=example.com=user@forwarder.test",
    "expired 22 days": signed(b"HV"),
    "expired 30 days": b"SRS0=dlPr=HN=example.com=user@forwarder.test",
    "future 1 day": b"SRS0=rwI2=IM=example.com=user@forwarder.test",
    "3-char stamp, correct hmac": signed(b"ILA"),
    "12-char stamp, correct hmac": signed(b"A" * 12),
    "empty stamp, correct hmac": signed(b""),
    "bad base32, correct hmac": signed(b"!!"),
    "srs1 tampered": b"SRS1=0000=hop1.example==AbCd=XY=orig.example=user@forwarder.test",
    "srs1 hashless": b"SRS1=hop1.example==AbCd=XY=orig.example=user@forwarder.test",
    "srs1 missing opaque": b"SRS1=SGQA=hop1.example@forwarder.test",
    "srs1 no leading separator": b"SRS1=vfUI=hop1.example=AbCd=XY=orig.example=user@x",
    "srs2 tag": b"SRS2=S3fv=IL=example.com=user@forwarder.test",
    "underscore separator": b"SRS0_S3fv=IL=example.com=user@forwarder.test",
    "no domain": b"SRS0=S3fv=IL=example.com=user",
    "not srs": b"user@example.com",
}
VALID = {
    "fresh": (GOOD, b"user@example.com"),
    "21 days": (b"SRS0=HdpT=HW=example.com=user@forwarder.test", b"user@example.com"),
    "lower-cased": (GOOD.lower(), b"user@example.com"),
    "base64url": (b"SRS0=m_le=IL=example.com=plusslash0@x", b"plusslash0@example.com"),
    "srs1": (
        b"SRS1=hWY1=hop1.example==AbCd=XY=orig.example=user@forwarder.test",
        b"SRS0=AbCd=XY=orig.example=user@hop1.example",
    ),
}

checks, failures, rejected = 0, [], {}
for name, address in FORGED.items():
    checks += 1
    try:
        result = srs.reverse(address, NOW)
    except SRSError as err:
        rejected[name] = type(err).__name__
    else:
        failures.append(f"forged {name!r} accepted as {result!r}")
for name, (address, original) in VALID.items():
    checks += 1
    try:
        result = srs.reverse(address, NOW)
    except SRSError as err:
        failures.append(f"valid {name!r} rejected: {err.reason}")
    else:
        if result != original:
            failures.append(f"valid {name!r} decoded to {result!r}")
policy = Policy(srs)
for sender, wanted in [
    (GOOD.replace(DOMAIN, b"other.example"), Outcome.ALREADY_SRS),
    (b"SRS0=0000=IL=example.com=user@other.example", Outcome.REWRITTEN),
    (b"SRS1=vfUI=hop1.example=AbCd=XY=orig.example=user@hop2.example", Outcome.MALFORMED),
]:
    checks += 1
    if policy.forward(sender, NOW).outcome is not wanted:
        failures.append(f"policy forward {sender!r} is not {wanted}")
try:
    assert False  # noqa: B011 - proves that -O really strips asserts here
    asserts_stripped = True
except AssertionError:
    asserts_stripped = False
print(json.dumps({
    "optimize": sys.flags.optimize,
    "asserts_stripped": asserts_stripped,
    "checks": checks,
    "forged": len(FORGED),
    "rejected": rejected,
    "failures": failures,
}))
"""

EXPECTED_FORGED = 24
EXPECTED_CHECKS = EXPECTED_FORGED + 5 + 3  # forged, valid, policy


def test_codec_rejects_forgeries_under_python_O() -> None:
    env = dict(os.environ)
    env.pop("PYTHONOPTIMIZE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC.parent), env.get("PYTHONPATH")]))
    child = subprocess.run(
        [sys.executable, "-O", "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    summary = json.loads(child.stdout)
    assert summary["optimize"] >= 1
    assert summary["asserts_stripped"] is True
    assert summary["failures"] == []
    assert summary["forged"] == EXPECTED_FORGED
    assert summary["checks"] == EXPECTED_CHECKS
    assert len(summary["rejected"]) == EXPECTED_FORGED  # every forged case was rejected


def test_sources_contain_no_assert_statement() -> None:
    sources = sorted(SRC.rglob("*.py"))
    assert {str(p.relative_to(SRC)) for p in sources} >= {"srs/codec.py", "srs/address.py"}
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
        assert found == [], f"{path.name}: assert on lines {found}"
