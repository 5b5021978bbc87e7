# Forgery figures by hand: millions of random SRS hashes against Codec.reverse, next to the model.
"""Count how many random forged SRS addresses decode, and compare with the model.

    python bench/forgery.py                      # 2,000,000 four-character forgeries
    python bench/forgery.py -n 5000000 -k 1 2 3 4 --srs1 --jobs 4

Every try is an SRS0 (or SRS1) address at our domain with a fresh, valid timestamp, its own
host (so the expected hashes are independent) and a random hash of ``k`` characters drawn
uniformly from the 66 characters srsd reads (``A-Z a-z 0-9 + / - _``). The codec runs with
``hash_length = 4`` and ``hash_min = k``: a forger sends only ``hash_min`` characters.

The model (``docs/security.md``, "Forgery"): one character matches with probability
``59/2112`` (case folded, base64url spelled as base64), ``k`` characters with
``(59/2112)**k``, about 2^-20.65 for k = 4. The printed z is (accepted - expected) / sd;
|z| < 6 is what ``tests/test_forgery.py`` requires of its smaller CI counts.
Then the CPU time of one call on fields of 1 MB (the CVE-2020-35573 class).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from srsd.srs.codec import BadHash, Codec, SRSError, day_stamp
from srsd.srs.policy import Policy

STANDARD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
PRESENTED = STANDARD + b"-_"
NOW = 1704110400
DAY = 86400
SECRET = b"forgery-bench-secret"
DOMAIN = b"forwarder.test"


def hash_class(char: int) -> int:
    folded = {ord("-"): ord("+"), ord("_"): ord("/")}.get(char, char)
    return folded + 32 if ord("A") <= folded <= ord("Z") else folded


def char_acceptance() -> Fraction:
    matches = sum(hash_class(e) == hash_class(x) for e in STANDARD for x in PRESENTED)
    return Fraction(matches, len(STANDARD) * len(PRESENTED))


def forge(job: tuple[int, int, int, bool]) -> tuple[int, float]:
    """(accepted, CPU seconds) for ``n`` tries of ``k`` characters from ``seed``."""
    n, k, seed, srs1 = job
    srs = Codec([SECRET], DOMAIN, hash_length=4, hash_min=k)
    rng = random.Random(seed)
    stamps = [day_stamp(NOW - age * DAY) for age in range(srs.max_age + 1)]
    stamps += [s.lower() for s in stamps]
    reverse = srs.reverse
    accepted = 0
    started = time.process_time()
    for i in range(n):
        forged = bytes(rng.choices(PRESENTED, k=k))
        if srs1:
            local = b"SRS1=%s=hop%d-%d.example==x=%s=o.example=u" % (
                forged,
                seed,
                i,
                rng.choice(stamps),
            )
        else:
            local = b"SRS0=%s=%s=h%d-%d.example=user" % (forged, rng.choice(stamps), seed, i)
        try:
            reverse(local + b"@" + DOMAIN, NOW)
        except BadHash:
            continue
        accepted += 1
    return accepted, time.process_time() - started


def count(n: int, k: int, srs1: bool, jobs: int, seed: int) -> tuple[int, float]:
    shares = [n // jobs + (1 if j < n % jobs else 0) for j in range(jobs)]
    work = [(share, k, seed * 1000 + j, srs1) for j, share in enumerate(shares) if share]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(forge, work))
    return sum(a for a, _ in results), sum(c for _, c in results)


def long_fields() -> list[tuple[str, float]]:
    """CPU seconds of the slowest of Codec/Policy forward/reverse on 1 MB fields."""
    size = 1 << 20
    shapes = {
        "timestamp": b"SRS0=abcd=" + b"A" * size + b"=h.example=u@x",
        "hash": b"SRS0=" + b"a" * size + b"=IL=example.com=user@x",
        "host": b"SRS0=abcd=IL=" + b"h" * size + b"=u@x",
        "user of separators": b"SRS0=abcd=IL=h=" + b"=" * size + b"@x",
        "quoted backslashes": b'"SRS0=abcd=IL=h=' + b"\\a" * (size // 2) + b'"@x',
        "SRS1 hop": b"SRS1=abcd=" + b"h" * size + b"==x@x",
    }
    policy = Policy(Codec([SECRET], DOMAIN))
    calls = (policy.codec.reverse, policy.codec.forward, policy.reverse, policy.forward)
    rows = []
    for name, address in shapes.items():
        worst = 0.0
        for call in calls:
            started = time.thread_time()
            with contextlib.suppress(SRSError):
                call(address, NOW)
            worst = max(worst, time.thread_time() - started)
        rows.append((name, worst))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2_000_000, help="tries per row")
    parser.add_argument("-k", type=int, nargs="+", default=[4], help="hash characters sent")
    parser.add_argument("--srs1", action="store_true", help="also forge SRS1 addresses")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    per_char = char_acceptance()
    print(
        f"model: one character matches with {per_char} = {float(per_char):.6f} "
        f"(2^{math.log2(per_char):.3f}); best choice, a letter: 1/32"
    )
    print(
        f"{'kind':5} {'k':>2} {'tries':>11} {'accepted':>9} {'expected':>10} "
        f"{'rate':>11} {'model rate':>11} {'1 in':>11} {'z':>6} {'us/try':>7}"
    )
    for kind in ["SRS0", "SRS1"] if args.srs1 else ["SRS0"]:
        for k in args.k:
            p = float(per_char**k)
            accepted, cpu = count(args.n, k, kind == "SRS1", args.jobs, args.seed + k)
            expected = args.n * p
            z = (accepted - expected) / math.sqrt(args.n * p * (1 - p))
            print(
                f"{kind:5} {k:>2} {args.n:>11,} {accepted:>9,} {expected:>10.2f} "
                f"{accepted / args.n:>11.3e} {p:>11.3e} {1 / p:>11,.0f} {z:>6.2f} "
                f"{cpu / args.n * 1e6:>7.2f}"
            )
    print("CPU time of the slowest codec/policy call on a 1 MB field:")
    for name, seconds in long_fields():
        print(f"  {name:20} {seconds * 1000:8.2f} ms")


if __name__ == "__main__":
    main()
