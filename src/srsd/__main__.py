# The `srsd` command (and `python -m srsd`): holds SIGHUP off first, then runs the command line.
"""Entry point of the ``srsd`` command and of ``python -m srsd``.

It does one thing before importing the rest of srsd (about a quarter of a second for
``serve``): hold SIGHUP off (:func:`srsd.serve.hangups.hold`), so that a reload signal sent while
srsd starts is applied once it is ready instead of ending it.
"""

from __future__ import annotations

import sys

from srsd.serve import hangups


def main() -> int:
    """Run the ``srsd`` command line (:func:`srsd.cli.main`) with SIGHUP held off."""
    if sys.argv[1:2] == ["serve"]:
        hangups.hold()
    from srsd.cli import main as cli_main  # noqa: PLC0415  (after the hold: it takes time)

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
