"""Decrypting age-encrypted SOPS YAML in-process, exactly as the `sops` 3.11 binary does, with
that binary as the fallback for everything this module cannot prove it does the same way.

`decrypt_bytes` has the contract of `sops.decrypt_bytes`: the decrypted YAML document (without
the `sops` metadata) or a one-line `DecryptionError` naming the file, never a secret.

What "exactly" means, step by step (sops 3.11, yaml.v3 v3.0.4):

- **YAML.** The document is read from libyaml's event stream (PyYAML's C parser: no recursion,
  depth bounded) and each plain scalar is typed as yaml.v3 types it: `true`/`false` (three
  spellings) are booleans and `yes`/`no`/`on`/`off` stay strings; `~`/`null`/empty are null;
  integers by Go's `ParseInt(s, 0, 64)` after removing `_` (so `0x1F`, `0o17`, `0b101` and the
  YAML 1.1 octal `0777` are integers; `08` is the float 8), floats by yaml.v3's pattern. Quoted
  and block scalars are strings. A plain scalar that may be a timestamp (`NNNN-...`: sops
  decodes those to `time.Time` and rewrites them), an integer beyond int64, a non-finite float,
  an explicit tag, an anchor or alias, a second document, a duplicate or non-string key falls
  back to the binary. A caller that read the same bytes already (the spec loader) hands its
  document over instead, with the plain scalars it typed: taken when yaml.v3 types each of them
  the same (`same_tree`), so the file is not parsed twice.
- **Values.** The value at key path `k1, ..., kn` (list indices are not part of it) is
  encrypted if the file's one rule says so (`unencrypted_suffix`, default `_unencrypted`;
  `encrypted_suffix`; `unencrypted_regex`; `encrypted_regex`: any key of the path decides).
  `ENC[AES256_GCM,data:,iv:,tag:,type:]` is opened with the data key and the additional data
  `k1:...:kn:`; types `str`, `int` (Go `Atoi`), `float` (`ParseFloat`), `bool` (`ParseBool`).
  An empty string stays empty (sops never encrypts it). A `comment` value in a list (sops 3.11
  encrypts a comment inside an encrypted list into such an item) is a comment again: dropped
  from the data, not in the MAC. `time`, `bytes` (sops 3.11 panics on it) and a non-string
  under an encrypted key (it panics too) go to the binary.
- **MAC.** SHA-512 over the walked values as sops renders them (strings as UTF-8, ints in
  decimal, floats as Go's `FormatFloat(v, 'f', -1, 64)`, booleans `True`/`False`), in document
  order, nulls skipped; with `mac_only_encrypted` it starts from sops's fixed 32 bytes and takes
  only encrypted values. Compared, in upper-case hex, with the stored MAC, itself opened with the
  additional data `lastmodified` as Go's `time.RFC3339` prints it (`Z` for a zero offset,
  fractional seconds dropped).
- **Data key.** The `age` entries are tried in file order (sops tries age keys first) with the
  X25519 identities of `SOPS_AGE_KEY`, `SOPS_AGE_KEY_FILE` and the default `keys.txt`
  (`$XDG_CONFIG_HOME/sops/age/keys.txt` when that is absolute, else `$HOME/.config/...`); a
  source with any line that is not a plain X25519 identity (plugin, passphrase-protected file)
  is not used here. Parsed identities are cached per (variables, file mtime/size/inode).
- **Output.** The decrypted tree is emitted as YAML in which every scalar is plain exactly when
  yaml.v3 would write it plain (so the loader reads the same values and types as from
  `sops decrypt`), in the document's key order; comments are not kept (they never reach the
  spec). The string `<<`, which yaml.v3 writes back as `!!merge <<`, goes to the binary.
  `decrypt_document` skips this step (and the caller's parse of it) when its caller says it
  reads the tree as it would read that YAML: the spec loader's `reads_back_as_is`.

Falls back to the binary (counted in `stats()`): no age entry; `key_groups` or
`shamir_threshold`; comment-regex rules; `SOPS_AGE_KEY_CMD`, `SOPS_KEYSERVICE`,
`SOPS_ENABLE_LOCAL_KEYSERVICE`, a `SOPS_DECRYPTION_ORDER` that does not start with age; any
metadata this module does not parse strictly; and, when no identity opens the data key, any
source it could not use (ssh keys, plugin or protected identities) or other key kinds (PGP,
KMS, ...). A failed MAC or value check is confirmed by the binary before it is reported, and
the binary's verdict wins (`overruled` counts the times it disagreed). A wrong or missing key
is reported here, in the binary's words.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reconciler.errors import DecryptionError
from reconciler.secrets import sops
from reconciler.secrets.native._base import MAC_ONLY_ENCRYPTED_INIT, Fallback, Suspect, _crypto
from reconciler.secrets.native.identities import (
    data_key,
    dearmor,
    default_keys_path,
    load_identities,
)
from reconciler.secrets.native.metadata import go_regex, parse_metadata, rfc3339
from reconciler.secrets.native.tree import (
    Comment,
    additional_data,
    decode_value,
    decrypt_tree,
    mac_bytes,
    open_value,
)
from reconciler.secrets.native.yaml_io import (
    Unsure,
    emit_document,
    format_float_f,
    format_float_g,
    parse_document,
    resolve_plain,
    same_tree,
    writes_plain,
)

log = logging.getLogger(__name__)

# -- counters ----------------------------------------------------------------------------------

_stats_lock = threading.Lock()
_stats: dict[str, int] = {}


def _count(what: str) -> None:
    with _stats_lock:
        _stats[what] = _stats.get(what, 0) + 1


def stats() -> dict[str, int]:
    """How files were decrypted since start (or `reset_stats`): `native`, `fallback` (with
    `fallback:<reason>` per reason), `confirmed` (a native failure the binary agreed with),
    `overruled` (the binary decrypted a file the native path refused) and `unconfirmed` (a
    native failure reported as is: no binary to ask)."""
    with _stats_lock:
        return dict(_stats)


def reset_stats() -> None:
    with _stats_lock:
        _stats.clear()


# -- the entry point ---------------------------------------------------------------------------


def decrypt_bytes(path: Path, data: bytes, env: dict[str, str] | None = None) -> bytes:
    """Plaintext YAML of `data` (the content of `path`, named in messages only); any failure
    is a one-line DecryptionError naming the file. Same contract as `sops.decrypt_bytes`."""
    out = decrypt_document(path, data, env, keep=_never)
    if not isinstance(out, bytes):  # pragma: no cover - `_never` keeps no tree
        raise AssertionError("decrypt_bytes: a tree was kept")
    return out


def _never(tree: dict[str, Any]) -> bool:
    return False


class NeedsBinary(Exception):
    """`decrypt_document(binary=False)`: the native path alone cannot settle this file (it
    would ask the `sops` binary); nothing was counted."""


def decrypt_document(
    path: Path,
    data: bytes,
    env: dict[str, str] | None = None,
    *,
    keep: Callable[[dict[str, Any]], bool],
    binary: bool = True,
    parsed: tuple[dict[str, Any], Sequence[tuple[str, Any, bool]]] | None = None,
) -> dict[str, Any] | bytes:
    """`decrypt_bytes`, except that a tree the native path decrypted (every check made: the
    data key opened with the real key, each value and the MAC verified) is returned as is
    when `keep(tree)` holds, instead of emitted as YAML for the caller to parse again: the
    caller's `keep` says it reads the tree as it would read that YAML (`spec.loader`). A tree
    it does not keep is emitted, as `decrypt_bytes` does; the binary's output is its bytes.
    `binary` False: `NeedsBinary` instead of asking the binary (the caller asks again where
    `sops` processes may run side by side). `parsed`: `data` as the caller read it, with the
    plain scalars it typed (`same_tree`), so as not to parse the same bytes again."""
    if len(data) > sops.MAX_INPUT_BYTES:
        raise DecryptionError(f"{path}: larger than {sops.MAX_INPUT_BYTES} bytes: refused")
    out: dict[str, Any] | bytes
    try:
        tree = decrypt_native_tree(path, data, env, parsed=parsed)
        out = tree if keep(tree) else _emitted(tree)
    except Fallback as exc:
        if not binary:
            raise NeedsBinary from None
        _count("fallback")
        _count(f"fallback:{exc.reason}")
        log.debug("%s: decrypted by the sops binary (%s)", path, exc.reason)
        return sops.decrypt_bytes(path, data, env)
    except Suspect as exc:
        if not binary:
            raise NeedsBinary from None
        try:
            sops.sops_binary()
        except DecryptionError:  # no binary to ask: the native verdict stands
            _count("unconfirmed")
            raise exc from None
        try:
            overruled = sops.decrypt_bytes(path, data, env)
        except DecryptionError:
            _count("confirmed")
            raise
        _count("overruled")
        log.warning("%s: sops decrypted what the native path refused (%s)", path, exc.reason)
        return overruled
    except DecryptionError:
        raise
    except Exception as exc:  # a bug here must cost a sops process, never the file
        if not binary:
            raise NeedsBinary from None
        _count("fallback")
        _count("fallback:internal error")
        # the type only: a message could quote a value
        log.warning("%s: native decryption failed (%s); sops decides", path, type(exc).__name__)
        return sops.decrypt_bytes(path, data, env)
    _count("native")
    return out


def decrypt_native(path: Path, data: bytes, env: Mapping[str, str] | None = None) -> bytes:
    """The native path alone: the output, or `Fallback` (ask the binary), `Suspect` (a failed
    check to confirm with the binary) or `DecryptionError` (a wrong or missing key)."""
    return _emitted(decrypt_native_tree(path, data, env))


def decrypt_native_tree(
    path: Path,
    data: bytes,
    env: Mapping[str, str] | None = None,
    *,
    parsed: tuple[dict[str, Any], Sequence[tuple[str, Any, bool]]] | None = None,
) -> dict[str, Any]:
    """The decrypted document (without `sops`) as yaml.v3 types it, every check made; raises
    as `decrypt_native` (which emits it). The one seam of the native path: a test that patches
    it sends every decryption to the binary. `parsed`: see `same_tree`."""
    environ: Mapping[str, str] = os.environ if env is None else env
    _check_environment(environ)
    engine = _crypto()
    tree = same_tree(*parsed) if parsed is not None else None
    if tree is None:
        tree = parse_document(data)
    meta = parse_metadata(tree.pop("sops", None))
    key = data_key(path, meta, environ, engine)
    decrypted, computed = decrypt_tree(path, tree, meta, key, engine)
    stored = open_value(path, engine.aesgcm(key), engine.invalid_tag, meta.mac, meta.mac_aad, "MAC")
    if stored != computed:
        raise Suspect(f"{path}: cannot decrypt: {sops._reason('MAC mismatch')}", "mac")
    return decrypted


def _emitted(decrypted: dict[str, Any]) -> bytes:
    out = emit_document(decrypted)
    if len(out) > sops.MAX_OUTPUT_BYTES // 4:
        # sops indents by 4, this by 2: near the output bound, only the binary knows its size
        raise Fallback("large output")
    return out


def _check_environment(environ: Mapping[str, str]) -> None:
    """Settings with which the binary could find a key, or behave, unlike this module."""
    for name in ("SOPS_AGE_KEY_CMD", "SOPS_KEYSERVICE", "SOPS_ENABLE_LOCAL_KEYSERVICE"):
        if name in environ:
            raise Fallback(name)
    order = environ.get("SOPS_DECRYPTION_ORDER", "")
    if order:
        kinds = order.split(",")
        if len(set(kinds)) != len(kinds) or kinds[0] != "age":
            raise Fallback("SOPS_DECRYPTION_ORDER")


__all__ = [
    "MAC_ONLY_ENCRYPTED_INIT",
    "Comment",
    "Fallback",
    "NeedsBinary",
    "Suspect",
    "Unsure",
    "additional_data",
    "dearmor",
    "decode_value",
    "decrypt_bytes",
    "decrypt_document",
    "decrypt_native",
    "decrypt_native_tree",
    "default_keys_path",
    "emit_document",
    "format_float_f",
    "format_float_g",
    "go_regex",
    "load_identities",
    "mac_bytes",
    "parse_document",
    "parse_metadata",
    "reset_stats",
    "resolve_plain",
    "rfc3339",
    "same_tree",
    "stats",
    "writes_plain",
]
