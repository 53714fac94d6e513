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
  back to the binary.
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

import base64
import hashlib
import io
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import DecryptionError
from reconciler.secrets import sops

log = logging.getLogger(__name__)

MAX_DEPTH = 64
"""Nesting deeper than the spec loader allows goes to the binary (as it did before)."""

# sha256(b"sops"): what sops feeds the MAC first when `mac_only_encrypted` is set.
MAC_ONLY_ENCRYPTED_INIT = bytes.fromhex(
    "8a3fd2ad54ce66527b1034f3d147be0b0b975b3bf44f72c6fdadec8176f27d69"
)
DEFAULT_UNENCRYPTED_SUFFIX = "_unencrypted"
_NO_KEY = "Failed to get the data key"  # sops's words, turned into our one line by _REASONS
_TAMPERED = "message authentication failed"


class Fallback(Exception):
    """The native path cannot prove it would do what the binary does: ask the binary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Suspect(DecryptionError):
    """A failed MAC or value check: reported only once the binary agrees."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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
    if len(data) > sops.MAX_INPUT_BYTES:
        raise DecryptionError(f"{path}: larger than {sops.MAX_INPUT_BYTES} bytes: refused")
    try:
        out = decrypt_native(path, data, env)
    except Fallback as exc:
        _count("fallback")
        _count(f"fallback:{exc.reason}")
        log.debug("%s: decrypted by the sops binary (%s)", path, exc.reason)
        return sops.decrypt_bytes(path, data, env)
    except Suspect as exc:
        try:
            sops.sops_binary()
        except DecryptionError:  # no binary to ask: the native verdict stands
            _count("unconfirmed")
            raise exc from None
        try:
            out = sops.decrypt_bytes(path, data, env)
        except DecryptionError:
            _count("confirmed")
            raise
        _count("overruled")
        log.warning("%s: sops decrypted what the native path refused (%s)", path, exc.reason)
        return out
    except DecryptionError:
        raise
    except Exception as exc:  # a bug here must cost a sops process, never the file
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
    environ: Mapping[str, str] = os.environ if env is None else env
    _check_environment(environ)
    engine = _crypto()
    tree = parse_document(data)
    meta = parse_metadata(tree.pop("sops", None))
    key = _data_key(path, meta, environ, engine)
    decrypted, computed = _decrypt_tree(path, tree, meta, key, engine)
    stored = _open(path, engine.aesgcm(key), engine.invalid_tag, meta.mac, meta.mac_aad, "MAC")
    if stored != computed:
        raise Suspect(f"{path}: cannot decrypt: {sops._reason('MAC mismatch')}", "mac")
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


@dataclass(frozen=True)
class _Crypto:
    """The two libraries, imported on first use (a `validate` run needs neither)."""

    aesgcm: Callable[[bytes], Any]
    invalid_tag: type[Exception]
    pyrage: Any


_crypto_lock = threading.Lock()
_crypto_cache: list[_Crypto] = []


def _crypto() -> _Crypto:
    with _crypto_lock:
        if not _crypto_cache:
            try:
                import pyrage
                from cryptography.exceptions import InvalidTag
                from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            except ImportError as exc:  # pragma: no cover - both are dependencies
                raise Fallback(f"import {exc.name}") from None
            _crypto_cache.append(_Crypto(AESGCM, InvalidTag, pyrage))
        return _crypto_cache[0]


# -- YAML in: yaml.v3's typing over libyaml's events -------------------------------------------

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_SPECIAL_FLOATS = frozenset(
    {".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"}
    | {"-.inf", "-.Inf", "-.INF"}
)
_MAP_HINT = frozenset("yYnNtTfFoO~")
_GO_INT = re.compile(r"([-+]?)(0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO][0-7]+|0[0-7]*|[1-9][0-9]*)")
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_MAYBE_TIMESTAMP = re.compile(r"[0-9]{4}-")
_NONZERO_MANTISSA = re.compile(r"[-+]?[0-9.]*[1-9]")
_INT64 = (-(1 << 63), (1 << 63) - 1)


class Unsure(Exception):
    """A plain scalar whose yaml.v3 type this module does not decide (see `resolve_plain`)."""


def resolve_plain(text: str) -> tuple[str, Any]:
    """yaml.v3's type of a plain scalar: (`null`|`bool`|`int`|`uint`|`float`|`str`, value);
    `Unsure` for what may be a timestamp, the merge key, non-finite floats and a few forms
    only Go's ParseFloat spells (those never come out of `sops encrypt`)."""
    if text in _NULLS:
        return "null", None
    first = text[0]
    if first in _MAP_HINT:
        if text in _BOOLS:
            return "bool", _BOOLS[text]
        return "str", text
    if first == ".":
        if text in _SPECIAL_FLOATS:
            raise Unsure("non-finite float")
        if "_" in text:
            raise Unsure("underscore in a float")
        if _YAML_FLOAT.fullmatch(text):
            number = float(text)
            if number == 0 and _NONZERO_MANTISSA.match(text):
                raise Unsure("float underflow")
            return "float", number
        return "str", text
    if first == "<" and text == "<<":
        raise Unsure("merge key")
    if not (first in "+-" or "0" <= first <= "9"):
        return "str", text
    if text in _SPECIAL_FLOATS:
        raise Unsure("non-finite float")
    if _MAYBE_TIMESTAMP.match(text):
        raise Unsure("timestamp")
    plain = text.replace("_", "")
    m = _GO_INT.fullmatch(plain)
    if m:
        sign, digits = m.groups()
        if digits[:2] in ("0x", "0X"):
            value = int(digits[2:], 16)
        elif digits[:2] in ("0b", "0B"):
            value = int(digits[2:], 2)
        elif digits[:2] in ("0o", "0O"):
            value = int(digits[2:], 8)
        elif digits.startswith("0"):
            value = int(digits, 8)  # Go's base 0: a leading 0 is octal (and "0" is 0)
        else:
            value = int(digits)
        signed = -value if sign == "-" else value
        if _INT64[0] <= signed <= _INT64[1]:
            return "int", signed
        if not sign and value < 1 << 64:
            return "uint", value  # ParseUint: sops cannot walk a uint64
    if _YAML_FLOAT.fullmatch(plain):
        number = float(plain)
        if math.isinf(number):
            return "str", text  # ParseFloat's range error: yaml.v3 keeps the text
        if number == 0 and _NONZERO_MANTISSA.match(plain):
            raise Unsure("float underflow")
        return "float", number
    return "str", text


_STRUCTURE = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_NO_KEY_YET = object()


def parse_document(data: bytes) -> dict[str, Any]:
    """The single YAML document of `data` as dicts (key order kept), lists and typed
    scalars; `Fallback` for anything this module does not type exactly as yaml.v3 does."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise Fallback("not UTF-8") from None
    root: list[Any] = []
    stack: list[tuple[Any, list[Any]]] = [(root, [_NO_KEY_YET])]  # (container, [pending key])
    documents = 0
    try:
        for event in _events(data):
            kind = type(event)
            if kind is yaml.ScalarEvent:
                if event.anchor is not None or event.tag is not None:
                    raise Fallback("YAML tag or anchor")
                if not event.style:  # plain ("" from the C parser): typed as yaml.v3 types it
                    try:
                        kind_name, value = resolve_plain(event.value)
                    except Unsure as exc:
                        raise Fallback(f"plain scalar: {exc}") from None
                    if kind_name == "uint":
                        raise Fallback("plain scalar: integer beyond int64")
                else:
                    kind_name, value = "str", event.value
                _add(stack, value, kind_name == "str")
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                if event.anchor is not None or event.tag is not None:
                    raise Fallback("YAML tag or anchor")
                if len(stack) > MAX_DEPTH:
                    raise Fallback("nested too deeply")
                container: Any = {} if kind is yaml.MappingStartEvent else []
                _add(stack, container, False)
                stack.append((container, [_NO_KEY_YET]))
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                stack.pop()
            elif kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise Fallback("more than one YAML document")
                if event.version is not None or event.tags:
                    raise Fallback("YAML directive")
            elif kind is yaml.AliasEvent:
                raise Fallback("YAML alias")
    except yaml.YAMLError:
        raise Fallback("YAML the native parser refuses") from None
    if len(root) != 1 or not isinstance(root[0], dict):
        raise Fallback("not a mapping at the top level")
    doc: dict[str, Any] = root[0]
    return doc


def _events(data: bytes) -> Iterator[Any]:
    loader = yaml.CSafeLoader(data)
    try:
        while loader.check_event():
            yield loader.get_event()
    finally:
        loader.dispose()


def _add(stack: list[tuple[Any, list[Any]]], value: Any, is_str: bool) -> None:
    container, pending = stack[-1]
    if type(container) is list:
        container.append(value)
        return
    key = pending[0]
    if key is _NO_KEY_YET:
        if not is_str:
            raise Fallback("mapping key that is not a string")
        if value in container:
            raise Fallback("duplicate mapping key")
        pending[0] = value
        return
    container[key] = value
    pending[0] = _NO_KEY_YET


# -- metadata ----------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]{1,9})?"
    r"(Z|[+-]([0-9]{2}):([0-9]{2}))"
)
_SEMVER = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
_OTHER_KEY_KINDS = ("pgp", "kms", "gcp_kms", "azure_kv", "hc_vault")
_STRING_FIELDS = (
    "lastmodified",
    "mac",
    "version",
    "unencrypted_suffix",
    "encrypted_suffix",
    "unencrypted_regex",
    "encrypted_regex",
    "unencrypted_comment_regex",
    "encrypted_comment_regex",
)
_CREATED_AT_KINDS = ("pgp", "kms", "gcp_kms", "azure_kv", "hc_vault")


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def rfc3339(text: str) -> str | None:
    """`text` parsed by Go's `time.Parse(time.RFC3339, ...)` and printed back by
    `Format(time.RFC3339)`: `Z` for a zero offset, `+hh:mm` otherwise, fractional seconds
    dropped. None for anything outside the strict form sops writes (the binary decides)."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    zone, zone_hour, zone_minute = m.group(7), m.group(8), m.group(9)
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        return None
    if hour > 23 or minute > 59 or second > 59:
        return None
    if zone != "Z":
        if int(zone_hour) > 23 or int(zone_minute) > 59:
            return None
        if zone_hour == "00" and zone_minute == "00":
            zone = "Z"
    return f"{text[:19]}{zone}"


@dataclass(frozen=True)
class AgeEntry:
    recipient: str
    enc: str


@dataclass(frozen=True)
class Metadata:
    age: tuple[AgeEntry, ...]
    other_keys: bool  # PGP, KMS, ... entries: keys this module cannot use
    mac: str
    mac_aad: str  # lastmodified as sops formats it for the MAC's additional data
    mac_only_encrypted: bool
    rule: tuple[str, str]  # (kind, value): which values are encrypted
    rule_regex: re.Pattern[str] | None


def parse_metadata(raw: Any) -> Metadata:
    """The `sops` mapping, checked as strictly as the binary would accept it; `Fallback`
    for anything else (including no metadata at all: the binary says why)."""
    if not isinstance(raw, dict):
        raise Fallback("no sops metadata")
    if "key_groups" in raw or "shamir_threshold" in raw:
        raise Fallback("key groups")
    for name in _STRING_FIELDS:
        if name in raw and not isinstance(raw[name], str):
            raise Fallback(f"metadata {name} is not a string")
    for name in ("unencrypted_comment_regex", "encrypted_comment_regex"):
        if raw.get(name):
            raise Fallback("comment regex")
    if not _SEMVER.fullmatch(raw.get("version", "")):
        raise Fallback("metadata version")  # the binary parses it as semver
    mac_aad = rfc3339(raw.get("lastmodified", ""))
    if mac_aad is None:
        raise Fallback("metadata lastmodified")
    mac_only = raw.get("mac_only_encrypted", False)
    if type(mac_only) is not bool:
        raise Fallback("metadata mac_only_encrypted")
    other_keys = False
    for kind in _OTHER_KEY_KINDS:
        entries = raw.get(kind)
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise Fallback(f"metadata {kind}")
        for entry in entries:
            created = entry.get("created_at", "")
            if kind in _CREATED_AT_KINDS and (
                not isinstance(created, str) or rfc3339(created) is None
            ):
                raise Fallback(f"metadata {kind} created_at")
            if kind == "kms" and entry.get("context"):
                raise Fallback("KMS encryption context")
        other_keys = other_keys or bool(entries)
    age = raw.get("age")
    if age is None:
        age = []
    if not isinstance(age, list):
        raise Fallback("metadata age")
    entries_age: list[AgeEntry] = []
    for entry in age:
        if not isinstance(entry, dict):
            raise Fallback("metadata age")
        recipient, enc = entry.get("recipient", ""), entry.get("enc", "")
        if not isinstance(recipient, str) or not isinstance(enc, str):
            raise Fallback("metadata age")
        entries_age.append(AgeEntry(recipient, enc))
    if not entries_age:
        raise Fallback("no age key")
    rules = [
        (name, raw[name])
        for name in (
            "unencrypted_suffix",
            "encrypted_suffix",
            "unencrypted_regex",
            "encrypted_regex",
        )
        if raw.get(name)
    ]
    if len(rules) > 1:
        raise Fallback("more than one encryption rule")
    rule = rules[0] if rules else ("unencrypted_suffix", DEFAULT_UNENCRYPTED_SUFFIX)
    pattern = None
    if rule[0].endswith("_regex"):
        pattern = go_regex(rule[1])
        if pattern is None:
            raise Fallback("regex outside the subset Go and Python read alike")
    return Metadata(
        age=tuple(entries_age),
        other_keys=other_keys,
        mac=raw.get("mac", ""),
        mac_aad=mac_aad,
        mac_only_encrypted=mac_only,
        rule=rule,
        rule_regex=pattern,
    )


_REGEX_LITERAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-:/@=,")
_REGEX_ESCAPABLE = frozenset(".-_$^()[]|*+?{}\\/")
_REPEAT = re.compile(r"\{([0-9]{1,4})(,([0-9]{0,4}))?\}")
_CLASS = re.compile(
    r"\[\^?(?:[a-zA-Z0-9]-[a-zA-Z0-9]|[a-zA-Z0-9_.:/@=,]|-(?=\])|(?<=\[)-|(?<=\[\^)-)+\]"
)


def go_regex(pattern: str) -> re.Pattern[str] | None:
    """`pattern` compiled so that Python's `search` matches exactly the strings Go's
    `regexp.Match` matches, or None when the pattern leaves the small subset where that is
    plain to see (literals, `.`, classes of literals and ranges, `\\d`, `\\w`, groups,
    alternation, `^`, `$`, quantifiers up to Go's 1,000)."""
    out: list[str] = []
    i, atom = 0, False  # atom: the previous token can take a quantifier
    depth = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch in _REGEX_LITERAL or ch == ".":
            out.append(ch)
            i, atom = i + 1, True
        elif ch == "\\":
            nxt = pattern[i + 1 : i + 2]
            if nxt in ("d", "w") or (nxt and nxt in _REGEX_ESCAPABLE):
                out.append(ch + nxt)
                i, atom = i + 2, True
            else:
                return None
        elif ch == "[":
            m = _CLASS.match(pattern, i)
            if m is None:
                return None
            out.append(m.group())
            i, atom = m.end(), True
        elif ch in "*+?" or ch == "{":
            if not atom:
                return None
            if ch == "{":
                m = _REPEAT.match(pattern, i)
                if m is None:
                    return None
                low, high = m.group(1), m.group(3)
                if int(low) > 1000 or (high and (int(high) > 1000 or int(high) < int(low))):
                    return None
                out.append(m.group())
                i = m.end()
            else:
                out.append(ch)
                i += 1
            if pattern[i : i + 1] == "?":  # lazy: the same strings match
                out.append("?")
                i += 1
            atom = False
        elif ch == "(":
            if pattern.startswith("(?:", i):
                out.append("(?:")
                i += 3
            elif pattern[i + 1 : i + 2] == "?":
                return None
            else:
                out.append("(")
                i += 1
            depth += 1
            atom = False
        elif ch == ")":
            if depth == 0:
                return None
            depth -= 1
            out.append(")")
            i, atom = i + 1, True
        elif ch == "|":
            out.append("|")
            i, atom = i + 1, False
        elif ch == "^":
            out.append("^")
            i, atom = i + 1, False
        elif ch == "$":
            out.append(r"\Z")  # Go's $ (no (?m)) is the very end, Python's also before a \n
            i, atom = i + 1, False
        else:
            return None
    if depth:
        return None
    try:
        return re.compile("".join(out), re.ASCII)
    except re.error:
        return None


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


def _data_key(path: Path, meta: Metadata, environ: Mapping[str, str], engine: _Crypto) -> bytes:
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


# -- the tree: decrypt and MAC -----------------------------------------------------------------

_ENC = re.compile(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]")
_GO_ATOI = re.compile(r"[-+]?[0-9]+")
_GO_FLOAT = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")
_GO_BOOLS = {
    "1": True,
    "t": True,
    "T": True,
    "TRUE": True,
    "true": True,
    "True": True,
    "0": False,
    "f": False,
    "F": False,
    "FALSE": False,
    "false": False,
    "False": False,
}


@dataclass(frozen=True)
class Comment:
    """A decrypted `type:comment` value: a YAML comment for sops, never data."""

    text: str


def additional_data(keys: list[str]) -> str:
    """The additional data sops binds a value to: its mapping keys joined by `:`, plus `:`
    (list indices are not part of it)."""
    return ":".join(keys) + ":"


def decode_value(plaintext: bytes, datatype: str) -> Any:
    """A decrypted value as sops types it (`Comment` for `comment`); `Fallback` where sops
    fails, or yields a type this module does not emit (`time`)."""
    if datatype == "str":
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise Fallback("value is not UTF-8") from None  # sops emits !!binary
    if datatype == "bytes":
        return bytes(plaintext)
    if datatype == "comment":
        return Comment(plaintext.decode("utf-8", "surrogateescape"))
    text = plaintext.decode("utf-8", "replace")
    if datatype == "int":
        if not _GO_ATOI.fullmatch(text):
            raise Fallback("int value sops does not parse")
        number = int(text)
        if not _INT64[0] <= number <= _INT64[1]:
            raise Fallback("int value out of range")
        return number
    if datatype == "float":
        if not _GO_FLOAT.fullmatch(text):
            raise Fallback("float value this module does not parse")
        value = float(text)
        if math.isinf(value) or (value == 0 and _NONZERO_MANTISSA.match(text)):
            raise Fallback("float value out of range")
        return value
    if datatype == "bool":
        if text not in _GO_BOOLS:
            raise Fallback("bool value sops does not parse")
        return _GO_BOOLS[text]
    raise Fallback("value type time" if datatype == "time" else "unknown value type")


def _digits(value: float) -> tuple[str, int]:
    """The shortest decimal digits that read back as |value| (Python's repr and Go's
    shortest formatting agree on them) and the decimal point's position: |value| =
    0.DIGITS x 10^point."""
    text = repr(abs(value))
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    joined = whole + fraction
    stripped = joined.lstrip("0")
    point = len(whole) + (int(exponent) if exponent else 0) - (len(joined) - len(stripped))
    digits = stripped.rstrip("0")
    if not digits:
        return "", 0
    return digits, point


def _fixed(digits: str, point: int, decimals: int) -> str:
    whole = (digits[:point] + "0" * max(0, point - len(digits))) if point > 0 else "0"
    if decimals <= 0:
        return whole
    frac = "".join(
        digits[point + i] if 0 <= point + i < len(digits) else "0" for i in range(decimals)
    )
    return f"{whole}.{frac}"


def format_float_f(value: float) -> str:
    """Go's `strconv.FormatFloat(value, 'f', -1, 64)` (finite values)."""
    digits, point = _digits(value)
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    return sign + _fixed(digits, point, max(len(digits) - point, 0))


def format_float_g(value: float) -> str:
    """Go's `strconv.FormatFloat(value, 'g', -1, 64)` (finite values), as yaml.v3 writes
    floats."""
    digits, point = _digits(value)
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    exponent = point - 1 if digits else -1
    if exponent < -4 or exponent >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        exp_sign = "-" if exponent < 0 else "+"
        return f"{sign}{mantissa}e{exp_sign}{abs(exponent):02d}"
    return sign + _fixed(digits, point, max(len(digits) - point, 0))


def mac_bytes(value: Any) -> bytes:
    """sops's `ToBytes`: what a value contributes to the MAC."""
    if type(value) is str:
        return value.encode("utf-8")
    if type(value) is bool:
        return b"True" if value else b"False"
    if type(value) is int:
        return str(value).encode()
    if type(value) is float:
        return format_float_f(value).encode()
    if type(value) is bytes:
        return value
    raise Fallback(f"value of type {type(value).__name__}")  # pragma: no cover - never built


class _Rule:
    """sops's `shouldBeEncrypted` for the file's one rule, memoised per key."""

    def __init__(self, meta: Metadata) -> None:
        self.kind, self.value = meta.rule
        self.regex = meta.rule_regex
        self._memo: dict[str, bool] = {}

    def _hit(self, key: str) -> bool:
        hit = self._memo.get(key)
        if hit is None:
            if self.regex is not None:
                hit = self.regex.search(key) is not None
            else:
                hit = key.endswith(self.value)
            self._memo[key] = hit
        return hit

    def encrypted(self, path: list[str]) -> bool:
        hit = any(self._hit(k) for k in path)
        return not hit if self.kind.startswith("unencrypted") else hit


def _b64(text: str) -> bytes:
    if not _B64.fullmatch(text):
        raise Fallback("base64 that Go may read differently")
    return base64.b64decode(text)


def _open(
    path: Path, cipher: Any, invalid_tag: type[Exception], value: str, aad: str, what: str
) -> Any:
    """One `ENC[...]` value opened with `aad` and typed; a failed tag is a `Suspect`."""
    if value == "":
        return ""  # sops never encrypts an empty string
    m = _ENC.match(value)
    if m is None:
        raise Fallback(f"{what} is not in sops's format")
    data, iv, tag = _b64(m.group(1)), _b64(m.group(2)), _b64(m.group(3))
    if not 8 <= len(iv) <= 128:
        raise Fallback("IV size")
    try:
        plain = cipher.decrypt(iv, data + tag, aad.encode("utf-8"))
    except invalid_tag:
        raise Suspect(f"{path}: cannot decrypt: {sops._reason(_TAMPERED)}", what) from None
    return decode_value(plain, m.group(4))


def _decrypt_tree(
    path: Path, tree: dict[str, Any], meta: Metadata, key: bytes, engine: _Crypto
) -> tuple[dict[str, Any], str]:
    """The tree with its values decrypted, and the MAC sops computes over it."""
    rule = _Rule(meta)
    mac = hashlib.sha512()
    mac_only = meta.mac_only_encrypted
    if mac_only:
        mac.update(MAC_ONLY_ENCRYPTED_INIT)
    keys: list[str] = []
    cipher = engine.aesgcm(key)

    def walk(node: Any) -> Any:
        kind = type(node)
        if kind is dict:
            out: dict[str, Any] = {}
            for k, v in node.items():
                keys.append(k)
                value = walk(v)
                if type(value) is Comment:  # sops would write it as a mapping: not here
                    raise Fallback("comment value in a mapping")
                out[k] = value
                keys.pop()
            return out
        if kind is list:
            # sops 3.11 turns a comment in an encrypted list into an item `ENC[...,type:comment]`
            # on encryption; decrypted, it is a comment again: not data, not in the MAC
            return [value for value in map(walk, node) if type(value) is not Comment]
        if node is None:
            return None  # sops neither decrypts nor MACs a null
        encrypted = rule.encrypted(keys)
        if encrypted:
            if kind is not str:
                raise Fallback("plaintext under an encrypted key")  # sops 3.11 panics
            value = _open(path, cipher, engine.invalid_tag, node, additional_data(keys), "value")
            if type(value) is bytes:
                raise Fallback("bytes value (sops 3.11 panics on it)")
            if type(value) is Comment:
                return value
        else:
            value = node
        if encrypted or not mac_only:
            mac.update(mac_bytes(value))
        return value

    decrypted = walk(tree)
    return decrypted, mac.hexdigest().upper()


# -- YAML out: what yaml.v3 writes plain stays plain -------------------------------------------

_BREAKS = frozenset("\r\n\x85\u2028\u2029")
_FIRST_INDICATORS = frozenset("#,[]{}&*!|>'\"%@`")
_OLD_BOOLS = frozenset(
    {"y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "n", "N", "no", "No", "NO", "off", "Off"}
    | {"OFF"}
)
_BASE60 = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")


def _printable(ch: str) -> bool:
    cp = ord(ch)
    return (
        cp == 0x0A
        or 0x20 <= cp <= 0x7E
        or 0xA0 <= cp <= 0xD7FF
        or (0xE000 <= cp <= 0xFFFD and cp != 0xFEFF)
    )


def _plain_allowed(text: str) -> bool:
    """yaml.v3's emitter analysis: may `text` be written as a plain scalar in block
    context?"""
    if text.startswith(("---", "...")):
        return False
    last = len(text) - 1
    preceded_by_blank = True
    for i, ch in enumerate(text):
        followed_by_blank = i == last or text[i + 1] in " \t"
        if i == 0:
            if ch in _FIRST_INDICATORS:
                return False
            if ch in "?:-" and followed_by_blank:
                return False
        elif (ch == ":" and followed_by_blank) or (ch == "#" and preceded_by_blank):
            return False
        if ch == "\t" or ch in _BREAKS or not _printable(ch):
            return False
        if ch == " " and (i == 0 or i == last):
            return False
        preceded_by_blank = ch in " \t" or ch in _BREAKS
    return True


def writes_plain(text: str) -> bool:
    """Whether yaml.v3 writes the string `text` as a plain scalar (else it quotes it, or uses
    a literal block for several lines): it must read back as a string, not look like a YAML
    1.1 boolean or sexagesimal number, and pass the emitter's analysis."""
    if not text or "\n" in text:
        return False
    try:
        kind, _ = resolve_plain(text)
    except Unsure:
        return False  # quoted: a string either way (the loader keeps timestamps as text)
    if kind != "str" or text in _OLD_BOOLS:
        return False
    if ":" in text and text[0] in "+-0123456789" and _BASE60.fullmatch(text):
        return False
    return _plain_allowed(text)


def emit_document(tree: dict[str, Any]) -> bytes:
    """The decrypted tree as one YAML document, every scalar plain exactly when yaml.v3
    writes it plain (so a YAML reader types it as it types sops's output)."""
    events: list[yaml.Event] = [yaml.StreamStartEvent(encoding="utf-8"), yaml.DocumentStartEvent()]
    _node_events(tree, events)
    events += [yaml.DocumentEndEvent(), yaml.StreamEndEvent()]
    buffer = io.BytesIO()
    dumper = yaml.CSafeDumper(buffer, allow_unicode=True, width=-1, encoding="utf-8")
    try:
        for event in events:
            dumper.emit(event)
    finally:
        dumper.dispose()
    return buffer.getvalue()


def _scalar(text: str, plain: bool) -> yaml.ScalarEvent:
    if text == "<<":
        # yaml.v3 writes the string `<<` plain, reads its own output back as the merge key
        # (sops encodes each value to a node that way) and so writes `!!merge <<`
        raise Fallback("output string <<")
    if plain:
        return yaml.ScalarEvent(None, None, (True, True), text)
    return yaml.ScalarEvent(None, None, (False, True), text, style='"')


def _node_events(node: Any, events: list[yaml.Event]) -> None:
    kind = type(node)
    if kind is dict:
        events.append(yaml.MappingStartEvent(None, None, True, flow_style=not node))
        for k, v in node.items():
            events.append(_scalar(k, writes_plain(k)))
            _node_events(v, events)
        events.append(yaml.MappingEndEvent())
    elif kind is list:
        events.append(yaml.SequenceStartEvent(None, None, True, flow_style=not node))
        for v in node:
            _node_events(v, events)
        events.append(yaml.SequenceEndEvent())
    elif kind is str:
        events.append(_scalar(node, writes_plain(node)))
    elif kind is bool:
        events.append(_scalar("true" if node else "false", True))
    elif kind is int:
        events.append(_scalar(str(node), True))
    elif kind is float:
        events.append(_scalar(format_float_g(node), True))
    elif node is None:
        events.append(_scalar("null", True))
    else:  # pragma: no cover - the walk builds nothing else
        raise Fallback(f"cannot emit {kind.__name__}")


__all__ = [
    "Fallback",
    "Suspect",
    "additional_data",
    "decode_value",
    "decrypt_bytes",
    "decrypt_native",
    "emit_document",
    "format_float_f",
    "format_float_g",
    "go_regex",
    "mac_bytes",
    "parse_document",
    "parse_metadata",
    "resolve_plain",
    "rfc3339",
    "stats",
    "writes_plain",
]
