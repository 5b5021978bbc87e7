# The unit's environment file (/etc/default/srsd): read by `srsd health`, re-read on reload.
"""``srsd.service`` reads ``EnvironmentFile=-/etc/default/srsd`` (postsrsd's variable names)
when systemd starts it; systemd never reads it again, so an edit there would need a restart.
Two things here close that gap:

* :func:`service_environment`: the environment a root shell would need to see what the
  unit's srsd sees (the file's values beneath the caller's own), for ``srsd health``.
* :class:`ReloadEnvironment`: the environment for ``srsd serve``'s reloads. When srsd
  started with the file's values (every ``KEY=value`` of the file is in its environment,
  as systemd put it there), a reload reads the file again: edited values apply like a
  changed TOML file (settings that need a restart say so), removed ones are gone.
  Otherwise the environment stays the one srsd started with.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from srsd.config.settings import SYSCONFDIR, ConfigError
from srsd.host.systemd import parse_environment_file

#: The packaged unit's environment file (``EnvironmentFile=-/etc/default/srsd``).
ENVIRONMENT_FILE = SYSCONFDIR / "default" / "srsd"


def read(path: Path | None = None) -> dict[str, str] | None:
    """The variables of the environment file (default :data:`ENVIRONMENT_FILE`); None when it
    does not exist; ConfigError when it cannot be read."""
    path = ENVIRONMENT_FILE if path is None else path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8"
        raise ConfigError(f"environment file {path}: {reason}") from None
    return parse_environment_file(text)


def service_environment(environ: Mapping[str, str], path: Path | None = None) -> dict[str, str]:
    """``environ`` over the environment file's values: what the packaged unit gives
    ``srsd serve``, plus what the caller set explicitly."""
    return {**(read(path) or {}), **environ}


class ReloadEnvironment:
    """The environment each reload loads settings from (called with no arguments)."""

    def __init__(self, environ: Mapping[str, str], path: Path | None = None) -> None:
        self._environ = dict(environ)
        self._path = path
        try:
            started_with = read(path)
        except ConfigError:
            started_with = None
        in_effect = bool(started_with) and all(
            environ.get(name) == value for name, value in (started_with or {}).items()
        )
        #: The variables that came from the file, when srsd started with its values.
        self.from_file = frozenset(started_with or ()) if in_effect else None

    def __call__(self) -> dict[str, str]:
        """The start-up environment, with the file's current values when it was in effect."""
        if self.from_file is None:
            return self._environ
        kept = {k: v for k, v in self._environ.items() if k not in self.from_file}
        return {**kept, **(read(self._path) or {})}
