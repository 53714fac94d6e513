"""The tree walk: each value opened with its key path as additional data, and the MAC summed
as sops sums it."""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.secrets import sops
from reconciler.secrets.native._base import (
    _TAMPERED,
    MAC_ONLY_ENCRYPTED_INIT,
    Fallback,
    Suspect,
    _Crypto,
)
from reconciler.secrets.native.identities import _B64
from reconciler.secrets.native.metadata import Metadata
from reconciler.secrets.native.yaml_io import _INT64, _NONZERO_MANTISSA, format_float_f

log = logging.getLogger(__name__)

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
    """sops's `shouldBeEncrypted` for the file's one rule: a value is encrypted when a key
    on its path hits the rule (or, for an `unencrypted_*` rule, when none does). The walk
    carries whether a key above hit (`hit`), each key tried once (memoised per key: the
    parser gives only string keys)."""

    def __init__(self, meta: Metadata) -> None:
        self.kind, self.value = meta.rule
        self.regex = meta.rule_regex
        self.inverted = self.kind.startswith("unencrypted")
        self._memo: dict[str, bool] = {}

    def hit(self, key: str) -> bool:
        hit = self._memo.get(key)
        if hit is None:
            if self.regex is not None:
                hit = self.regex.search(key) is not None
            else:
                hit = key.endswith(self.value)
            self._memo[key] = hit
        return hit

    def encrypted(self, hit: bool) -> bool:
        """For a value under keys of which one hit the rule (`hit`) or none did."""
        return not hit if self.inverted else hit


def _b64(text: str) -> bytes:
    if not _B64.fullmatch(text):
        raise Fallback("base64 that Go may read differently")
    return base64.b64decode(text)


def open_value(
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


def decrypt_tree(
    path: Path, tree: dict[str, Any], meta: Metadata, key: bytes, engine: _Crypto
) -> tuple[dict[str, Any], str]:
    """The tree with its values decrypted, and the MAC sops computes over it."""
    walk = _Walk(path, meta, key, engine)
    decrypted = walk.node(tree, False)
    return decrypted, walk.mac.hexdigest().upper()


class _Walk:
    """One file's decryption, node by node. An object, not a closure calling itself: that
    is a reference cycle, which kept the cipher (so the file's data key) until the collector
    ran; this is freed when its file is done."""

    def __init__(self, path: Path, meta: Metadata, key: bytes, engine: _Crypto) -> None:
        self.path = path
        self.rule = _Rule(meta)
        self.mac = hashlib.sha512()
        self.mac_only = meta.mac_only_encrypted
        if self.mac_only:
            self.mac.update(MAC_ONLY_ENCRYPTED_INIT)
        self.keys: list[str] = []
        self.cipher = engine.aesgcm(key)
        self.invalid_tag = engine.invalid_tag

    def node(self, node: Any, hit: bool) -> Any:
        kind = type(node)
        if kind is dict:
            out: dict[str, Any] = {}
            keys, rule = self.keys, self.rule
            for k, v in node.items():
                keys.append(k)
                value = self.node(v, hit or rule.hit(k))
                if type(value) is Comment:  # sops would write it as a mapping: not here
                    raise Fallback("comment value in a mapping")
                out[k] = value
                keys.pop()
            return out
        if kind is list:
            # sops 3.11 turns a comment in an encrypted list into an item `ENC[...,type:comment]`
            # on encryption; decrypted, it is a comment again: not data, not in the MAC
            return [value for v in node if type(value := self.node(v, hit)) is not Comment]
        if node is None:
            return None  # sops neither decrypts nor MACs a null
        encrypted = self.rule.encrypted(hit)
        if encrypted:
            if kind is not str:
                raise Fallback("plaintext under an encrypted key")  # sops 3.11 panics
            value = open_value(
                self.path, self.cipher, self.invalid_tag, node, additional_data(self.keys), "value"
            )
            if type(value) is bytes:
                raise Fallback("bytes value (sops 3.11 panics on it)")
            if type(value) is Comment:
                return value
        else:
            value = node
        if encrypted or not self.mac_only:
            self.mac.update(mac_bytes(value))
        return value
