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
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
HARNESSES = ("fuzz_codec", "fuzz_tcp_table", "fuzz_socketmap", "fuzz_milter", "fuzz_peercred")
#: Inputs per harness: about 6 s each at this machine's 2,400 to 2,800 inputs per second.
RUNS = 15_000
#: The time cap per harness, should a slow machine not reach RUNS.
MAX_SECONDS = 30


def test_bounded_campaign(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris (a test dependency) is not installed")
    campaigns = {}
    for name in HARNESSES:
        corpus = tmp_path / name
        corpus.mkdir()  # empty: the harness writes its seeds there first
        command = [
            sys.executable,
            str(ROOT / "fuzz" / f"{name}.py"),
            str(corpus),
            f"-runs={RUNS}",
            f"-max_total_time={MAX_SECONDS}",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/{name}-",
            "-print_final_stats=1",
        ]
        campaigns[name] = subprocess.Popen(
            command,
            cwd=ROOT / "fuzz",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
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


def harness(name: str, monkeypatch: pytest.MonkeyPatch, *, atheris: bool = False) -> Any:
    """``fuzz/NAME.py`` imported afresh; without atheris (as if not installed) by default."""
    monkeypatch.syspath_prepend(str(ROOT / "fuzz"))
    if not atheris:
        monkeypatch.setitem(sys.modules, "atheris", None)  # import atheris: ImportError
    for module in (name, "common"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return importlib.import_module(name)


@pytest.mark.parametrize("name", sorted(CRASHERS))
def test_crashers_stay_fixed(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module, _ = name.split(":")
    harness(module, monkeypatch).test_one_input(base64.b64decode(CRASHERS[name]))


@pytest.mark.parametrize("name", HARNESSES)
def test_seeds_replay_without_atheris(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = harness(name, monkeypatch)
    assert module.atheris is None
    assert module.SEEDS
    for seed in module.SEEDS:
        module.test_one_input(seed)


def test_crasher_inputs_decode_as_their_comments_say(monkeypatch: pytest.MonkeyPatch) -> None:
    common = harness("fuzz_codec", monkeypatch).Input
    fdp = common(base64.b64decode(CRASHERS["fuzz_codec:quoted-sender-quoted-mint"]))
    assert (fdp.ConsumeIntInRange(0, 3), fdp.ConsumeIntInRange(0, 40)) == (2, 15)
    assert fdp.ConsumeBytes(fdp.remaining_bytes()) == b'"F"@"'


@given(
    st.binary(max_size=40),
    st.lists(st.sampled_from([0, 1, 3, 12, 40, 255, 256, 1 << 16, 1 << 40]), max_size=6),
)
def test_input_reads_as_atheris_does(data: bytes, ranges: list[int]) -> None:
    atheris = pytest.importorskip("atheris", reason="atheris (a test dependency) is not installed")
    sys.path.insert(0, str(ROOT / "fuzz"))
    try:
        from common import Input
    finally:
        sys.path.remove(str(ROOT / "fuzz"))
    ours, theirs = Input(data), atheris.FuzzedDataProvider(data)
    for top in ranges:
        assert ours.ConsumeIntInRange(0, top) == theirs.ConsumeIntInRange(0, top)
        assert ours.remaining_bytes() == theirs.remaining_bytes()
    assert ours.ConsumeBytes(7) == theirs.ConsumeBytes(7)
    assert ours.ConsumeBytes(99) == theirs.ConsumeBytes(99)
