# Shared by the atheris harnesses: the input reader, seed corpora and the libFuzzer entry point.
"""Helpers for ``fuzz/fuzz_*.py``: read an input's parameters (:class:`Input`), write a
harness's seeds into an empty corpus directory, then hand over to atheris (libFuzzer). See
``fuzz/README.md``.

Nothing here needs atheris but :func:`run`: a harness imports without it, so the tests
replay its crashers and seeds in any environment (``tests/test_fuzz_campaign.py``).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


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
    try:
        import atheris  # noqa: PLC0415  (only fuzzing needs it)
    except ImportError:
        sys.exit("atheris is not installed (pip install -e '.[test]')")
    seed_empty_corpora(sys.argv, seeds)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


class Input:
    """The part of atheris' ``FuzzedDataProvider`` the harnesses use, in pure Python and
    byte for byte the same (libFuzzer's rules): integers are read from the END of the
    input, big-endian, as few bytes as the range needs, reduced modulo its size (the low
    end when the input is used up); bytes are read from the front."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._start, self._end = 0, len(data)

    def ConsumeIntInRange(self, low: int, high: int) -> int:
        """An integer in ``low..high`` from the end of the input."""
        span, result, shift = high - low, 0, 0
        while shift < 64 and span >> shift and self._end > self._start:
            self._end -= 1
            result = (result << 8) | self._data[self._end]
            shift += 8
        return low + result % (span + 1)

    def ConsumeBytes(self, count: int) -> bytes:
        """Up to ``count`` bytes from the front of what is left."""
        taken = self._data[self._start : min(self._start + count, self._end)]
        self._start += len(taken)
        return taken

    def remaining_bytes(self) -> int:
        """Bytes not consumed yet."""
        return self._end - self._start


def split_rest(fdp: Input) -> tuple[bytes, list[bytes]]:
    """The rest of the input, and the same bytes cut at up to 12 points the fuzzer chooses
    (a network's segmentation): ``(data, pieces)`` with ``b"".join(pieces) == data``."""
    cuts = [fdp.ConsumeIntInRange(0, 1 << 16) for _ in range(fdp.ConsumeIntInRange(0, 12))]
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    edges = [0, *sorted({cut % (len(data) + 1) for cut in cuts}), len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(edges)]
