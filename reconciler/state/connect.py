"""From settings to what every entry point needs first: the database URL and the master key
ring. One home for the CLI and `serve` (`server.runtime`) and the credential library."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from reconciler.config import Settings
from reconciler.errors import ConfigError
from reconciler.secrets.crypto import KeyRing, MasterKey
from reconciler.state.db import embedded_url

Warn = Callable[[str], None]
"""Where a start-up warning goes: stderr for commands, the log for `serve` (JSON lines)."""


def stderr_warning(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return embedded_url(settings.data_dir)


def master_keys(
    settings: Settings, *, create: bool = True, warn: Warn | None = None, must_exist: bool = False
) -> KeyRing:
    """From RECONCILER_MASTER_KEYS (ordered, by id: rotation) or RECONCILER_MASTER_KEY (one
    key, id `default`); with the embedded default, one kept in the data directory.
    `must_exist` (the credential library): a missing key file is an error, never created."""
    if settings.master_keys is not None:
        if settings.master_key is not None:
            raise ConfigError(
                "set RECONCILER_MASTER_KEYS or RECONCILER_MASTER_KEY, not both (the old single "
                "key goes into the list as default:<key>)"
            )
        return KeyRing.parse(settings.master_keys.get_secret_value())
    return KeyRing.single(master_key(settings, create=create, warn=warn, must_exist=must_exist))


def master_key(
    settings: Settings, *, create: bool = True, warn: Warn | None = None, must_exist: bool = False
) -> MasterKey:
    """From RECONCILER_MASTER_KEY; with the embedded default, one kept in the data directory.
    `create=False` (commands that write nothing) never writes a key file: without one, nothing
    was ever encrypted here, so a throwaway key plans the same."""
    if settings.master_key is not None:
        return MasterKey.from_b64(settings.master_key.get_secret_value())
    if settings.database_url is not None:
        raise ConfigError(
            "RECONCILER_MASTER_KEY (or RECONCILER_MASTER_KEYS) is required with "
            "RECONCILER_DATABASE_URL"
        )
    path = settings.data_dir / "master.key"
    if path.exists():
        return _read_key_file(path)
    if must_exist:
        raise ConfigError(
            f"{path}: no master key (the embedded database holds no credential yet: run "
            "`reconciler apply`), or set RECONCILER_MASTER_KEY"
        )
    key = MasterKey.generate()
    if not create:
        return key
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{settings.data_dir}: cannot create the data directory (RECONCILER_DATA_DIR): "
            f"{exc.strerror}"
        ) from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another first run got there first: use its key
        return _read_key_file(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the master key: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(key.to_b64() + "\n")
    (warn or stderr_warning)(
        f"generated a master key at {path} (mode 0600); set RECONCILER_MASTER_KEY in production"
    )
    return key


KEY_FILE_WAIT_S = 2.0
"""How long a key file may stay half-written (another first run creating it) before it is bad."""


def _read_key_file(path: Path) -> MasterKey:
    """The key in `path`. A process that just created the file may not have written it yet, so
    an empty or unterminated file is read again for a moment before it counts as corrupt."""
    deadline = time.monotonic() + KEY_FILE_WAIT_S
    while True:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not text"
            raise ConfigError(f"{path}: cannot read the master key: {reason}") from None
        try:
            return MasterKey.from_b64(text)
        except ConfigError:
            if text.endswith("\n") or time.monotonic() >= deadline:
                raise ConfigError(f"{path}: not a valid master key (base64 of 32 bytes)") from None
        time.sleep(0.05)
