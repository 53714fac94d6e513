"""Age identities from the environment as sops reads them, cached per key-file version, and
the data key they open."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import DecryptionError
from reconciler.secrets import sops
from reconciler.secrets.native._base import _NO_KEY, Fallback, _Crypto
from reconciler.secrets.native.metadata import Metadata

log = logging.getLogger(__name__)

# -- identities and the data key ---------------------------------------------------------------

_X25519_LINE = re.compile(r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}")
_ARMOR_HEADER = "-----BEGIN AGE ENCRYPTED FILE-----"
_ARMOR_FOOTER = "-----END AGE ENCRYPTED FILE-----"
_B64_LINE = re.compile(r"[A-Za-z0-9+/]{64}")
_B64_LAST = re.compile(r"[A-Za-z0-9+/]{1,64}={0,2}")
_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


@dataclass(frozen=True)
class Identities:
    keys: tuple[Any, ...]  # pyrage X25519 identities
    unusable: tuple[str, ...]  # sources the binary may read and this module does not


_ident_lock = threading.Lock()
_ident_cache: dict[tuple[Any, ...], Identities] = {}
_IDENT_CACHE_MAX = 16


def _stat_key(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def default_keys_path(environ: Mapping[str, str]) -> str | None:
    """Go's `os.UserConfigDir()` on Linux + `sops/age/keys.txt`: `$XDG_CONFIG_HOME` when set
    (an error, so no file, when it is relative), else `$HOME/.config`."""
    xdg = environ.get("XDG_CONFIG_HOME", "")
    if xdg:
        return os.path.join(xdg, "sops", "age", "keys.txt") if os.path.isabs(xdg) else None
    home = environ.get("HOME", "")
    return os.path.join(home, ".config", "sops", "age", "keys.txt") if home else None


def load_identities(environ: Mapping[str, str], engine: _Crypto) -> Identities:
    """The X25519 identities sops would load from `environ` (cached per variables and file
    versions: a thousand files read the key file once)."""
    key_file = environ.get("SOPS_AGE_KEY_FILE")
    default = default_keys_path(environ)
    inline = environ.get("SOPS_AGE_KEY")
    cache_key = (
        None
        if inline is None
        else hashlib.sha256(inline.encode("utf-8", "surrogateescape")).digest(),
        key_file,
        None if key_file is None else _stat_key(key_file),
        default,
        None if default is None else _stat_key(default),
    )
    with _ident_lock:
        found = _ident_cache.get(cache_key)
    if found is not None:
        return found
    keys: list[Any] = []
    unusable: list[str] = []
    sources: list[tuple[str, bytes | None]] = []
    if "SOPS_AGE_KEY" in environ:
        sources.append(("SOPS_AGE_KEY", environ["SOPS_AGE_KEY"].encode("utf-8", "surrogateescape")))
    if key_file is not None:
        sources.append(("SOPS_AGE_KEY_FILE", _read(key_file, unusable, "SOPS_AGE_KEY_FILE")))
    if default is not None:
        sources.append((default, _read(default, unusable, "keys.txt")))
    for name, raw in sources:
        if raw is None:
            continue
        parsed = _parse_identities(raw, engine)
        if parsed is None:
            unusable.append(name)
        else:
            keys.extend(parsed)
    result = Identities(tuple(keys), tuple(unusable))
    with _ident_lock:
        if len(_ident_cache) >= _IDENT_CACHE_MAX:
            _ident_cache.clear()
        _ident_cache[cache_key] = result
    return result


def _read(path: str, unusable: list[str], name: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 24)
    except FileNotFoundError:
        return None  # sops skips it too
    except OSError:
        unusable.append(name)
        return None


def _parse_identities(raw: bytes, engine: _Crypto) -> list[Any] | None:
    """One source's identities as sops's `parseIdentities` reads them (a line each, blank
    lines and `#` comments skipped), or None when the source has anything else: sops would
    either drop the whole source or use it in ways this module does not (plugins,
    passphrase-protected files)."""
    if raw[:14] in (b"age-encryption", b"-----BEGIN AGE"):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    found: list[Any] = []
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if not line or line.startswith("#"):
            continue
        if not _X25519_LINE.fullmatch(line):
            return None
        try:
            found.append(engine.pyrage.x25519.Identity.from_str(line))
        except Exception:
            return None
    return found


def _ssh_sources(environ: Mapping[str, str]) -> list[str]:
    """The ssh keys sops 3.11 also loads as age identities."""
    found = []
    if "SOPS_AGE_SSH_PRIVATE_KEY_FILE" in environ:
        found.append("SOPS_AGE_SSH_PRIVATE_KEY_FILE")
    home = environ.get("HOME", "")
    if home:
        for name in ("id_ed25519", "id_rsa"):
            candidate = os.path.join(home, ".ssh", name)
            try:
                os.stat(candidate)
            except OSError:
                continue
            found.append(candidate)
    return found


def dearmor(enc: str) -> bytes | None:
    """The binary age file in an armored `enc`, only in the exact form age writes (64
    columns, strict base64, one trailing newline at most); None otherwise."""
    lines = enc.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) < 3 or lines[0] != _ARMOR_HEADER or lines[-1] != _ARMOR_FOOTER:
        return None
    body = lines[1:-1]
    if not all(_B64_LINE.fullmatch(ln) for ln in body[:-1]) or not _B64_LAST.fullmatch(body[-1]):
        return None
    joined = "".join(body)
    if not _B64.fullmatch(joined):
        return None
    blob = base64.b64decode(joined)
    if base64.b64encode(blob).decode() != joined:  # non-canonical padding bits
        return None
    return blob


def data_key(path: Path, meta: Metadata, environ: Mapping[str, str], engine: _Crypto) -> bytes:
    identities = load_identities(environ, engine)
    unsure: list[str] = list(identities.unusable)
    if identities.keys:
        for entry in meta.age:
            blob = dearmor(entry.enc)
            if blob is None:
                unsure.append("armor")
                continue
            try:
                key: bytes = engine.pyrage.decrypt(blob, list(identities.keys))
            except engine.pyrage.DecryptError as exc:
                if "No matching keys" not in str(exc):
                    unsure.append("age file")
                continue
            except Exception:
                unsure.append("age file")
                continue
            if len(key) not in (16, 24, 32):
                raise Fallback("data key size")
            return key
    if meta.other_keys:
        raise Fallback("other key kinds")
    if unsure:
        raise Fallback(f"identity source not used natively: {unsure[0]}")
    if _ssh_sources(environ):
        raise Fallback("ssh identities")
    raise DecryptionError(f"{path}: cannot decrypt: {sops._reason(_NO_KEY)}")
