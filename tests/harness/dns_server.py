# A real authoritative DNS server (Debian's NSD) on a free loopback port, zones per test.
"""Run NSD in the foreground with zones written by the test, for ``srsd doctor``'s DNS checks.

:class:`NsdServer` writes an ``nsd.conf`` (no chroot, no database, no remote control, no
privilege drop) and one zone file per zone under a temporary directory, starts ``nsd -d`` on
127.0.0.1 at a free port and waits until it answers. :meth:`NsdServer.load` rewrites the
zones and restarts it (a fix applied, a new case). Missing NSD fails the test with the
package to install, never skips it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from tests.harness.child import Started, read_log, spawn, terminate
from tests.harness.ports import free_port

START_TIMEOUT = 20.0
SOA = "@ 3600 IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n@ 3600 IN NS ns.{zone}.\n"


def nsd_program() -> str:
    """The nsd binary (Debian's package ``nsd``)."""
    found = shutil.which("nsd") or ("/usr/sbin/nsd" if Path("/usr/sbin/nsd").exists() else None)
    if found is None:
        raise RuntimeError("NSD is not installed: apt-get install nsd (see .ci/run)")
    return found


class NsdServer(Started):
    """NSD serving ``zones`` (zone name -> records in zone-file syntax, names relative)."""

    def __init__(self, workdir: Path, zones: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port("127.0.0.1")
        self.zones = dict(zones)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "nsd.log"

    def _write(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = [
            "server:",
            f"  port: {self.port}",
            "  ip-address: 127.0.0.1",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{self.workdir}"',
            '  database: ""',
            f'  zonelistfile: "{self.workdir}/zone.list"',
            f'  xfrdfile: "{self.workdir}/xfrd.state"',
            f'  xfrdir: "{self.workdir}"',
            f'  pidfile: "{self.workdir}/nsd.pid"',
            f'  logfile: "{self.log_path}"',
            "  server-count: 1",
            "  verbosity: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for zone, records in self.zones.items():
            (self.workdir / f"{zone}.zone").write_text(
                f"$ORIGIN {zone}.\n$TTL 60\n" + SOA.format(zone=zone) + records + "\n"
            )
            conf += ["zone:", f"  name: {zone}", f'  zonefile: "{zone}.zone"']
        (self.workdir / "nsd.conf").write_text("\n".join(conf) + "\n")

    def start(self) -> NsdServer:
        """Write the configuration and zones, start NSD, wait until it answers."""
        self._write()
        self.proc = spawn(
            [nsd_program(), "-d", "-c", str(self.workdir / "nsd.conf")], self.log_path
        )
        deadline = time.monotonic() + START_TIMEOUT
        zone = next(iter(self.zones))
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nsd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                query = dns.message.make_query(f"{zone}.", dns.rdatatype.SOA)
                reply = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5)
                if reply.answer:
                    return self
            except (OSError, dns.exception.DNSException):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nsd did not answer within {START_TIMEOUT} s:\n{self.log()}")

    def load(self, zones: Mapping[str, str]) -> None:
        """Serve ``zones`` instead (restarts NSD on the same port)."""
        self.stop()
        self.zones = dict(zones)
        self.start()

    def stop(self) -> None:
        """Stop NSD (SIGTERM, then SIGKILL)."""
        if self.proc is not None:
            terminate(self.proc)
        self.proc = None

    def log(self) -> str:
        """NSD's log so far."""
        return read_log(self.log_path)

    @property
    def server(self) -> str:
        """The ``dns_servers`` entry for this server."""
        return f"127.0.0.1:{self.port}"
