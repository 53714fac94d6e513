"""The mask and the terminal escaping: every spelling of a secret word is masked, nothing else
needs to be, and no string can forge an output line."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.redact import (
    SECRET_WORDS,
    SENSITIVE,
    WEAK_WORDS,
    is_sensitive_key,
    looks_masked,
    mask_tree,
    printable,
    redact_text,
    redact_tree,
    safe_message,
)

# Words a secret key may be built from, as people write them.
SPELLINGS = sorted(SECRET_WORDS | {"apiKey", "accessKey", "privateKey", "clientSecret"})
NEUTRAL = ["x", "client", "access", "api", "my", "service", "default", "stripe", "webhook", "id"]


def _split(word: str) -> list[str]:
    out, cur = [], ""
    for ch in word:
        if ch.isupper() and cur:
            out.append(cur)
            cur = ch.lower()
        else:
            cur += ch.lower()
    return [*out, cur]


def spell(parts: list[str], style: str) -> str:
    words = [w for p in parts for w in _split(p)]
    if style == "camel":
        return words[0] + "".join(w.title() for w in words[1:])
    if style == "pascal":
        return "".join(w.title() for w in words)
    if style == "snake":
        return "_".join(words)
    if style == "kebab":
        return "-".join(words)
    if style == "upper":
        return "_".join(w.upper() for w in words)
    if style == "train":
        return "-".join(w.title() for w in words)
    return "".join(words)  # flat: "xapikey"


@settings(max_examples=1000)
@given(
    word=st.sampled_from(SPELLINGS),
    plural=st.booleans(),
    prefix=st.lists(st.sampled_from(NEUTRAL), max_size=2),
    suffix=st.lists(st.sampled_from(NEUTRAL), max_size=1),
    style=st.sampled_from(["camel", "pascal", "snake", "kebab", "upper", "train", "flat"]),
)
def test_property_every_spelling_of_a_secret_word_is_masked(
    word: str, plural: bool, prefix: list[str], suffix: list[str], style: str
) -> None:
    core = word + ("s" if plural else "")
    key = spell([*prefix, core, *suffix], style)
    if style == "flat" and suffix and word in WEAK_WORDS:
        # "keyid", "authaccess": a weak word buried mid-word is not recognisable as one
        return
    assert is_sensitive_key(key), key
    tree = {"outer": {key: "hunter2-secret-value", "list": [{key: 42}]}}
    masked = json.dumps(redact_tree(tree))
    assert "hunter2" not in masked and "42" not in masked


def test_the_issue_spellings() -> None:
    for key in [
        "apiKeys", "client_secrets", "x-auth-tokens", "passwords", "bearer", "jwt",
        "passphrase", "privateKey", "accessKeyId", "secretId", "X-Api-Key", "Authorization",
        "SESSION_TOKEN", "Set-Cookie", "signingSecret", "hmacKey", "authToken", "credentialId",
    ]:  # fmt: skip
        assert is_sensitive_key(key), key


def test_ordinary_assistant_fields_stay_visible() -> None:
    for key in [
        "name", "firstMessage", "model", "voice", "voiceId", "provider", "temperature",
        "maxTokens", "keywords", "keyterm", "author", "url", "timeoutSeconds", "messages",
        "content", "role", "endCallPhrases", "tokenLimit", "emotionRecognitionEnabled",
    ]:  # fmt: skip
        assert not is_sensitive_key(key), key


def test_mask_keeps_structure_under_a_sensitive_key() -> None:
    tree = {"server": {"url": "u", "headers": {"X-Custom": "a", "x-vapi-secret": "b"}}}
    assert mask_tree(tree, lambda v: f"<{v}>") == {
        "server": {"url": "u", "headers": {"X-Custom": "<a>", "x-vapi-secret": "<b>"}}
    }
    assert redact_tree({"apiKey": None, "token": ["a", {"b": 1}]}) == {
        "apiKey": None,
        "token": [SENSITIVE, {"b": SENSITIVE}],
    }


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:]+:[^\s/@]+@")


def _plain_mask(value: Any, replace: Any, under: bool = False) -> Any:
    """`mask_tree` as first written (isinstance at every node), which its faster form must
    equal on any tree."""
    if isinstance(value, dict):
        return {k: _plain_mask(v, replace, under or is_sensitive_key(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_mask(v, replace, under) for v in value]
    if under and value is not None:
        return replace(value)
    if isinstance(value, str) and "@" in value and _USERINFO.search(value):
        return replace(value)
    return value


class _Dict(dict):  # type: ignore[type-arg]
    pass


class _List(list):  # type: ignore[type-arg]
    pass


class _Str(str):
    pass


_KEYS = st.sampled_from(["name", "apiKey", "headers", "x-vapi-secret", "url", "token", "id", 7])
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(["https://u:pw@host/x", "a@b", "@"]).flatmap(
        lambda s: st.sampled_from([s, _Str(s)])
    ),
    st.tuples(st.integers()),
)
_TREES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(_List),
        st.dictionaries(_KEYS, inner, max_size=3),
        st.dictionaries(_KEYS, inner, max_size=3).map(_Dict),
    ),
    max_leaves=20,
)


@settings(max_examples=500)
@given(tree=_TREES, under=st.booleans())
def test_property_the_mask_is_the_plain_mask_on_any_tree(tree: Any, under: bool) -> None:
    def mark(leaf: Any) -> str:
        return f"<masked {type(leaf).__name__}>"

    assert mask_tree(tree, mark, under=under) == _plain_mask(tree, mark, under)


def test_redact_text_masks_pairs_tokens_urls_and_known_values() -> None:
    text = (
        'bad "apiKey": "sk-live-123456", password=hunter22; Authorization: Bearer abc.def.ghi '
        "see https://user:pa55word@example.com/x and the key KNOWN-VALUE-1"
    )
    out = redact_text(text, known=["KNOWN-VALUE-1"])
    for secret in ("sk-live-123456", "hunter22", "abc.def.ghi", "pa55word", "KNOWN-VALUE-1"):
        assert secret not in out
    assert "https://(sensitive)@example.com/x" in out


@given(st.text())
def test_property_printable_is_one_safe_line(text: str) -> None:
    shown = printable(text)
    assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown
    for ch in shown:
        assert ch == " " or unicodedata.category(ch) not in {"Cc", "Cf", "Zl", "Zp", "Cs"}


def test_printable_escapes_terminal_codes_and_cuts() -> None:
    assert printable("a\x1b[31mred\nX\u202e") == "a\\x1b[31mred\\x0aX\\u202e"
    assert printable("abcdefghij", 6) == "abc..."
    assert safe_message("token=abc def, \x07", limit=100) == "token=(sensitive), \\x07"
    assert redact_text("password: my pass phrase") == "password: (sensitive)"


def test_looks_masked() -> None:
    for value in ["********", "sk-...****abcd", "[REDACTED]", "hidden", "••••••"]:
        assert looks_masked(value), value
    for value in ["secret", "a*b", "", 3, None]:
        assert not looks_masked(value), value


def test_more_names_and_passwords_in_urls() -> None:
    for key in ["creds", "passcode", "pin", "pinCode", "userCreds"]:
        assert is_sensitive_key(key), key
    for key in ["pinned", "shipping", "spinner", "opinion"]:
        assert not is_sensitive_key(key), key
    tree = {"server": {"url": "https://bot:hunter2@hooks.example/v", "backup": "https://x/v"}}
    assert redact_tree(tree) == {"server": {"url": SENSITIVE, "backup": "https://x/v"}}


@settings(max_examples=300)
@given(
    word=st.sampled_from(SPELLINGS),
    ext=st.sampled_from(["yaml", "yml", "YAML", "json", "txt"]),
    folder=st.sampled_from(["", "specs/", "/etc/specs/"]),
)
def test_a_file_named_like_a_secret_keeps_its_message(word: str, ext: str, folder: str) -> None:
    """`passwd.yaml: symlink to outside the specs directory: refused` is a file name and a
    message about it: the message stays whole (it once printed `passwd.yaml: (sensitive)
    directory: refused`); a secret pair inside the message is still masked."""
    name = f"{folder}{word}.{ext}"
    for message in (
        "symlink to outside the specs directory: refused",
        "dangling symlink: refused",
        "not a regular file or a directory: refused",
    ):
        assert redact_text(f"{name}: {message}") == f"{name}: {message}"
    shown = redact_text(f"{name}: bad value: {word}=hunter2-value, password: two words")
    assert "hunter2" not in shown and "two words" not in shown
    assert shown.startswith(f"{name}: bad value: ")
    # the same word as a key, or a dotted key ending in it, is still a key
    assert redact_text(f"{word}: hunter2 and more") == f"{word}: {SENSITIVE}"
    assert "hunter2" not in redact_text(f"db.{word}=hunter2")
