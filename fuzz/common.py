# Shared by the atheris harnesses: seed corpora and the libFuzzer entry point.
"""Helpers for ``fuzz/fuzz_*.py``: write a harness's seeds into an empty corpus directory,
then hand over to atheris (libFuzzer). See ``fuzz/README.md``."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import atheris


def seed_empty_corpora(argv: Sequence[str], seeds: Sequence[bytes]) -> None:
    """Write ``seeds`` into every corpus directory named on the command line that exists
    and is empty (libFuzzer's positional arguments), so a first run starts from real
    requests instead of nothing."""
    for arg in argv[1:]:
        if arg.startswith("-"):
            continue
        directory = Path(arg)
        if directory.is_dir() and not any(directory.iterdir()):
            for number, seed in enumerate(seeds):
                (directory / f"seed-{number:03d}").write_bytes(seed)


def run(test_one_input: Callable[[bytes], None], seeds: Sequence[bytes]) -> None:
    """The ``__main__`` of a harness: seed, set up atheris, fuzz until libFuzzer stops."""
    seed_empty_corpora(sys.argv, seeds)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def split_rest(fdp: atheris.FuzzedDataProvider) -> tuple[bytes, list[bytes]]:
    """The rest of the input, and the same bytes cut at up to 12 points the fuzzer chooses
    (a network's segmentation): ``(data, pieces)`` with ``b"".join(pieces) == data``."""
    cuts = [fdp.ConsumeIntInRange(0, 1 << 16) for _ in range(fdp.ConsumeIntInRange(0, 12))]
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    edges = [0, *sorted({cut % (len(data) + 1) for cut in cuts}), len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(edges)]
