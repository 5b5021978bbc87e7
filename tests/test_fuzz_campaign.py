# A bounded coverage-guided fuzz campaign (atheris) over the codec and both wire decoders.
"""Runs each ``fuzz/fuzz_*.py`` harness for a fixed number of inputs with a fixed seed, all
in parallel, and fails on any crash (an invariant broken, an unexpected exception).
The harnesses, their invariants and how to run a long campaign by hand: ``fuzz/README.md``.
A crash prints the input in base64: keep it as a regression test under ``tests/``.
"""

from __future__ import annotations

import base64
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris (a test dependency) is not installed")

ROOT = Path(__file__).resolve().parents[1]
HARNESSES = ("fuzz_codec", "fuzz_tcp_table", "fuzz_socketmap", "fuzz_milter", "fuzz_peercred")
#: Inputs per harness: about 6 s each at this machine's 2,400 to 2,800 inputs per second.
RUNS = 15_000
#: The time cap per harness, should a slow machine not reach RUNS.
MAX_SECONDS = 30


def test_bounded_campaign(tmp_path: Path) -> None:
    campaigns = {}
    for name in HARNESSES:
        corpus = tmp_path / name
        corpus.mkdir()  # empty: the harness writes its seeds there first
        command = [sys.executable, str(ROOT / "fuzz" / f"{name}.py"), str(corpus),
                   f"-runs={RUNS}", f"-max_total_time={MAX_SECONDS}", "-seed=1",
                   f"-artifact_prefix={tmp_path}/{name}-", "-print_final_stats=1"]  # fmt: skip
        campaigns[name] = subprocess.Popen(
            command, cwd=ROOT / "fuzz", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace")  # fmt: skip
    failures = []
    for name, process in campaigns.items():
        output, _ = process.communicate(timeout=MAX_SECONDS * 4)
        done = re.search(r"Done (\d+) runs", output)
        if process.returncode != 0 or done is None:
            failures.append(f"--- {name} (exit {process.returncode}) ---\n{output[-4000:]}")
        elif int(done[1]) < min(RUNS, 1000):
            failures.append(f"--- {name} ran only {done[1]} inputs ---\n{output[-2000:]}")
    assert not failures, "\n".join(failures)


#: Inputs that crashed a harness, replayed in-process (base64, as libFuzzer prints them).
#: Both broke an over-strict first version of ``fuzz_codec.py``'s round-trip invariant, not
#: srsd: the harness now states the behaviour they showed, and these keep it stated.
CRASHERS = {
    # '"F"@"aF': a quoted sender whose host is '"' mints a quoted SRS address; the original
    # decodes unquoted (F is a dot-atom) and mints the same address unquoted
    "fuzz_codec:quoted-sender-quoted-mint": "IkYiQCJhRg==",
    # 'SRS1=@S=@?"=="@...': an SRS1 sender whose first hop holds "@" decodes to an address
    # that splits elsewhere (Postfix never sends such a host)
    "fuzz_codec:srs1-hop-with-at-sign": "U1JTMT1AUz1APyI9PSJAFwA=",
}


@pytest.mark.parametrize("name", sorted(CRASHERS))
def test_crashers_stay_fixed(name: str) -> None:
    harness, _ = name.split(":")
    sys.path.insert(0, str(ROOT / "fuzz"))
    try:
        module = importlib.import_module(harness)
    finally:
        sys.path.remove(str(ROOT / "fuzz"))
    module.test_one_input(base64.b64decode(CRASHERS[name]))
