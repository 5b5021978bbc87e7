# srsd under attack: a target srsd with metrics, and attackers run as other users.
"""For the abuse, fault and admission tests: :class:`Target` is ``srsd serve`` with a
socketmap and a metrics endpoint (its counters read back over HTTP), with the limits each test
module gives; :func:`attackers` runs ``attacker.py`` (beside this module) as other uids
(:mod:`tests.harness.local_users`), below srsd's CPU priority, for as long as the body runs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.harness.local_users import require_root, run_as
from tests.harness.metrics import metric_samples
from tests.harness.ports import free_port
from tests.harness.srsd_process import SrsdProcess, empty_config

TIMEOUT = 10.0  # the bound on every wait here
#: The limits of the admission attacks (test_admission_attacks, the flooded mail flow): a
#: small cap the attackers reach, and an idle time-out long enough that idling never ends an
#: attack (admission must).
MAX_CONNECTIONS = 50
IDLE_TIMEOUT = 60.0
ADMISSION_LIMITS = ("--max-connections", str(MAX_CONNECTIONS), "--timeout", str(IDLE_TIMEOUT))
WARM_UP = 0.5  # the attackers' head start before the body runs
#: The attackers' CPU priority below srsd's and the good clients'. What is tested is how
#: srsd shares its connections; on a 2-CPU machine, attackers that reconnect in a busy
#: loop at equal priority also take the CPUs from srsd and the clients (a local user can
#: always do that, with or without srsd), and the latency would measure the scheduler.
ATTACKER_NICE = 10
ATTACKER_SECONDS = 60.0  # the bound on an attacker's life, should the test not stop it
ATTACKER = (Path(__file__).parent / "attacker.py").read_text()


class Target(SrsdProcess):
    """``srsd serve`` with a socketmap and a metrics endpoint, an empty config, and ``extra``
    arguments (the limits of the test module)."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.socketmap_port = free_port("127.0.0.1")
        self.metrics_port = free_port("127.0.0.1")
        super().__init__(
            workdir,
            extra_args=[
                "--config",
                str(empty_config(workdir)),
                "--socketmap",
                f"inet:127.0.0.1:{self.socketmap_port}",
                "--metrics-listen",
                f"127.0.0.1:{self.metrics_port}",
                *extra,
            ],
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self, name: str) -> int:
        """A ``/proc/PID/status`` figure in bytes (``VmRSS``, ``VmHWM``)."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(rf"^{name}:\s+(\d+) kB$", text, re.M)
        assert match, text
        return int(match[1]) * 1024

    def metrics(self) -> dict[str, float]:
        """Every sample of ``/metrics``, by its name with labels."""
        return metric_samples(self.metrics_port, timeout=TIMEOUT)

    def open_connections(self) -> int:
        return int(self.metrics()["srsd_connections_open"])

    def evicted(self) -> int:
        return int(self.metrics()["srsd_connections_evicted_total"])

    def rejected(self) -> int:
        return int(self.metrics()["srsd_connections_rejected_total"])

    def lookups(self) -> int:
        return int(sum(v for k, v in self.metrics().items() if k.startswith("srsd_lookups_total")))

    def wait_open(self, count: int) -> None:
        """Wait (bounded) until srsd counts ``count`` open connections."""
        deadline = time.monotonic() + TIMEOUT
        while (now := self.open_connections()) != count:
            assert time.monotonic() < deadline, f"{now} connections open, expected {count}"
            time.sleep(0.05)


@contextmanager
def attackers(port: int, mode: str, *plan: tuple[int, int]) -> Iterator[list[dict[str, int]]]:
    """``(uid, connections)`` attackers in ``mode`` on ``port`` while the body runs (at most
    :data:`ATTACKER_SECONDS`); yields, after :data:`WARM_UP`, the list their counts land in
    when they have stopped."""
    require_root()
    results: list[dict[str, int]] = []
    with ExitStack() as stack:
        children = []
        for uid, size in plan:
            child = run_as(
                uid,
                ATTACKER,
                [mode, "127.0.0.1", str(port), str(size), str(ATTACKER_SECONDS)],
                nice=ATTACKER_NICE,
            )
            stack.callback(child.kill)
            children.append(child)
        time.sleep(WARM_UP)
        yield results
        for child in children:
            child.terminate()  # the attacker prints its counts and exits
        for child in children:
            out, err = child.communicate(timeout=TIMEOUT)
            assert child.returncode == 0, err.decode()
            results.append(json.loads(out))
