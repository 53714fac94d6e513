"""The `sops` metadata of a file, parsed strictly (anything unusual goes to the binary), and
the subset of Go regexps whose meaning Python shares."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from reconciler.secrets.native._base import DEFAULT_UNENCRYPTED_SUFFIX, Fallback

log = logging.getLogger(__name__)

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
