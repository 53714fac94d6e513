"""What may be shown: values under secret-looking keys masked, user text made safe for a terminal.

Pure and dependency-free, so every layer (the Vapi client's error messages, the planner's
stored configs, the CLI's output) masks with the same rules.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

SENSITIVE = "(sensitive)"

# A key is sensitive when one of its words (split at camelCase, kebab-case, snake_case, dots
# and digits, plurals folded) is a secret word. Strong words also count inside a longer word
# ("xapitoken", "clientsecret"); weak ones only whole or at its end ("apikey", "oauth"), so
# "keywords" or "author" stay visible.
STRONG_WORDS = frozenset(
    {
        "secret", "password", "passwd", "passphrase", "credential", "bearer", "jwt",
        "cookie", "signature", "apikey", "privatekey", "accesskey", "authorization",
    }
)  # fmt: skip
WEAK_WORDS = frozenset(
    {
        "key", "token", "auth", "pwd", "private", "header", "hmac", "otp", "dsn", "salt",
        "cred", "passcode", "pin",
    }
)  # fmt: skip
# "maxTokens", "tokenLimit": a count of tokens, not one.
_QUANTITY_WORDS = frozenset({"max", "min", "num", "count", "limit", "total", "budget"})
SECRET_WORDS = STRONG_WORDS | WEAK_WORDS
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _forms(word: str) -> set[str]:
    """The word and what it may be the plural of ("keys", "cookies", "passwords")."""
    forms = {word}
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        forms.add(word[:-1])
        if word.endswith("ies"):
            forms.add(word[:-3] + "y")
    return forms


def key_words(key: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(key)]


def _secret_word(word: str) -> bool:
    if word in SECRET_WORDS or any(w in word for w in STRONG_WORDS):
        return True
    return any(word.endswith(w) for w in WEAK_WORDS if len(w) >= 3)


def is_sensitive_key(key: object) -> bool:
    """Whether a JSON key names a secret. Keys repeat across every org's configs on every
    run, so the verdict is cached by the key's text (bounded: an attacker's endless new keys
    only evict)."""
    return _sensitive_text(key if isinstance(key, str) else str(key))


@functools.lru_cache(maxsize=4096)
def _sensitive_text(key: str) -> bool:
    words = [form for word in key_words(key) for form in _forms(word)]
    if "token" in words and _QUANTITY_WORDS.intersection(words):
        words = [w for w in words if w not in ("token", "tokens")]
    return any(_secret_word(word) for word in words)


def mask_tree(value: Any, replace: Callable[[Any], Any], *, under: bool = False) -> Any:
    """`value` with every scalar leaf under a secret-looking key, and every string holding a
    URL with a password in it, replaced by `replace(leaf)`.

    Structure is kept below a sensitive key (header names stay visible, each value is
    replaced), so two masked trees still compare leaf by leaf. `None` is kept: an absent
    secret is not a secret.
    """
    return _masked(value, replace, under)


def _masked(value: Any, replace: Callable[[Any], Any], under: bool) -> Any:
    # every live object of every org goes through here on each run: what a JSON parser makes
    # is told by its exact type first, anything else (a subclass) as before
    kind = type(value)
    if kind is str:
        return replace(value) if under or _has_userinfo(value) else value
    if kind is dict:
        if under:
            return {k: _masked(v, replace, True) for k, v in value.items()}
        return {k: _masked(v, replace, is_sensitive_key(k)) for k, v in value.items()}
    if kind is list:
        return [_masked(v, replace, under) for v in value]
    if value is None or kind is int or kind is bool or kind is float:
        return replace(value) if under and value is not None else value
    if isinstance(value, dict):
        return {k: _masked(v, replace, under or is_sensitive_key(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, replace, under) for v in value]
    if under:
        return replace(value)
    if isinstance(value, str) and _has_userinfo(value):
        return replace(value)
    return value


def _has_userinfo(text: str) -> bool:
    """https://user:password@host (the regular expression only where it may match: most
    strings have no "@")."""
    return "@" in text and _URL_USERINFO.search(text) is not None


def redact_tree(value: Any) -> Any:
    """For display: every secret-looking leaf becomes "(sensitive)"."""
    return mask_tree(value, lambda _leaf: SENSITIVE)


_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:]+:[^\s/@]+@")
_SCHEME_TOKEN = re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=-]{4,}")
_KEY_VALUE = re.compile(
    r"""(?P<q>["']?)(?P<key>[A-Za-z0-9_.-]{2,64})(?P=q)(?P<sep>\s*[:=]\s*)"""
    # a quoted value, or an unquoted one up to a delimiter or the next `key:` pair (so a
    # passphrase with spaces is masked whole)
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|"""
    r"""[^\s,;&{}\[\]"'](?:(?!\s+[A-Za-z0-9_.-]{2,64}\s*[:=])[^,;&}\]\n"'])*)"""
)
_ESCAPED_QUOTE = re.compile(r'\\+"')
# "passwd.yaml: symlink to outside the specs directory: refused": a file name followed by a
# message about the file, not a key and its value (a dotted key such as "db.password" ends in
# the name of the value; a file name ends in the type of the file)
_FILE_NAME = re.compile(
    r"(?i)\.(?:ya?ml|json|toml|ini|cfg|conf|txt|md|rst|csv|tsv|log|sql|xml|html?|lock)$"
)


def redact_text(text: str, *, known: Iterable[str] = ()) -> str:
    """Free text (an error body, a library's message) with likely secrets masked: the given
    known values, `key: value` / `key=value` pairs under secret-looking keys, bearer tokens and
    passwords in URLs."""
    for value in sorted({k for k in known if k and len(k) >= 4}, key=len, reverse=True):
        text = text.replace(value, SENSITIVE)
    text = _ESCAPED_QUOTE.sub('"', text)  # JSON quoted inside a string: read its pairs too
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{SENSITIVE}@", text)
    text = _SCHEME_TOKEN.sub(lambda m: f"{m.group(1)}{m.group(2)}{SENSITIVE}", text)

    out: list[str] = []
    pos = 0
    while (m := _KEY_VALUE.search(text, pos)) is not None:
        key = m.group("key")
        if (
            not is_sensitive_key(key)
            or _FILE_NAME.search(key)
            or m.group("value").strip("\"'") == SENSITIVE
        ):
            out.append(text[pos : m.start("sep")])  # the value may hold a pair of its own
            pos = m.start("sep")
            continue
        value = m.group("value")
        trail = value[len(value.rstrip()) :]  # keep the space before what follows
        out.append(f"{text[pos : m.start('value')]}{SENSITIVE}{trail}")
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def printable(text: object, limit: int | None = None) -> str:
    """`text` safe to print on one terminal line: control characters, escape sequences,
    bidirectional overrides and line separators become visible escapes (`\\x1b`, `\\u202e`),
    so a file name or a value cannot forge an output line or send terminal codes. With
    `limit`, cut to that many characters (escapes included) and end with "...".
    """
    out: list[str] = []
    for ch in str(text):
        if ch == " " or unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    result = "".join(out)
    if limit is not None and len(result) > limit:
        result = result[: max(0, limit - 3)] + "..."
    return result


def safe_message(text: str, *, known: Iterable[str] = (), limit: int = 300) -> str:
    """Masked, escaped and cut short: what an outside message may become in ours."""
    return printable(redact_text(text, known=known), limit)


_MASK_WORDS = frozenset({"redacted", "[redacted]", "<redacted>", "hidden", "[hidden]", "(hidden)"})
_MASK_RUN = re.compile(r"[*\u2022\u25cf]{3,}")


def looks_masked(value: object) -> bool:
    """A value a server shows in place of a secret it will not reveal ("********",
    "sk-...****abcd", "[REDACTED]"): it cannot be compared with ours."""
    if not isinstance(value, str):
        return False
    return value.strip().lower() in _MASK_WORDS or bool(_MASK_RUN.search(value))
