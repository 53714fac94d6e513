"""Native SOPS decryption (`reconciler.secrets.native`) against the real `sops` binary.

A corpus is encrypted by the binary at test time: every document below under every rule
variant of `VARIANTS` (`encrypted_regex`, `unencrypted_suffix`, `encrypted_suffix`,
`unencrypted_regex`, the implicit default, with and without `mac_only_encrypted`), each file
to three age recipients. Every file must decrypt natively (no fallback, unless it is one of
`EXPECTED_FALLBACKS`) to what `sops decrypt` gives, as the spec loader reads both: same values,
same types, same key order. Broken files (tampered value, tag, MAC, lastmodified, swapped
values, edited plaintext, wrong key, missing key, truncations) get the binary's verdict, in one
line naming the file, never a traceback; the native path must have detected the tampering
itself (not handed it over).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage
import pytest
import yaml

from reconciler.errors import DecryptionError
from reconciler.secrets import native, sops
from reconciler.spec.loader import load_tree, parse_yaml
from tests.helpers import SpecDir, key_of, live, org_doc

RECIPIENTS = 3

VARIANTS: dict[str, str] = {  # the lines of each creation rule besides `age`
    "regex-maconly": "    encrypted_regex: ^credentials$\n    mac_only_encrypted: true\n",
    "regex": "    encrypted_regex: ^credentials$\n",
    "default": "",
    "unencrypted-suffix-maconly": "    unencrypted_suffix: _unencrypted\n"
    "    mac_only_encrypted: true\n",
    "encrypted-suffix": "    encrypted_suffix: _secret\n",
    "unencrypted-regex": "    unencrypted_regex: ^(apiVersion|kind|public.*)$\n",
    "regex-alternation": "    encrypted_regex: ^(credentials|password|token)$\n"
    "    mac_only_encrypted: true\n",
}

KITCHEN = """\
apiVersion: reconciler/v1
kind: Organization
public_note: visible to all
credentials:
  vapi: {apiKey: sk-live-kitchen-1, webhookSecret: ""}
  nested:
    list: [a, 1, 2.5, true, null, {x: y, z: [1, [2, [3]]]}]
    empty_map: {}
    empty_list: []
    password: hunter2
    token_secret: t0k3n
    count_unencrypted: 3
  ints: [0, -1, 42, 9223372036854775807, -9223372036854775808]
  floats: [0.0, -0.0, 1.5, 2.0, 1e6, 1.0e-7, 123456.789, 1e21, 5e-324, 1.7976931348623157e308]
  bools: [true, false, True, FALSE]
spec:
  password: in spec
  list_of_maps:
    - name: one
      token: abc
      token_secret: s1
    - name: two
      token: def
  deep: {a: {b: {c: {d: {e: leaf, e_secret: deep secret}}}}}
  nothing:
  tilde: ~
"""

_PLAIN = """\
  octal: 0777
  octal_neg: -0777
  hex: 0x1F
  bin: 0b101
  oct12: 0o17
  under: 1_000
  eight: 08
  float: 1.50
  exp: 1e3
  dot: .5
  signed: +7
  minus_zero: -0
  yes: yes
  "on": on
  y: y
  no_value:
  tilde: ~
  null_word: null
  big: 9223372036854775807
  neg: -42
  huge: 123456789012345678901234567890
  overflow: 1e400
  sexagesimal: 1:20
  truthy: True
  falsy: FALSE
  not_bool: tRUE
  word: hello world
  dash: -x
  dotted: 1.2.3
  colon_inside: a:b
  hash_inside: a#b
  ellipsis: x...
"""

SCALARS = f"apiVersion: v1\ncredentials:\n{_PLAIN}plain:\n{_PLAIN}"

TRICKY_STRINGS = [
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "Y",
    "true",
    "False",
    "null",
    "~",
    "",
    "0777",
    "1e3",
    "1_000",
    "0x1F",
    "0b11",
    ".5",
    "08",
    "1:20",
    "-",
    "- x",
    "a: b",
    "a:b",
    "#c",
    "a #c",
    "a#c",
    " lead",
    "trail ",
    "tab\there",
    "multi\nline",
    "trailing newline\n",
    "\nleading newline",
    "é ✓ 中文",
    "emoji 😀",
    "'single'",
    '"double"',
    "x" * 300,
    "2024-01-01",
    "---",
    "...",
    "@at",
    "`tick",
    "%pc",
    "!bang",
    "&amp",
    "*star",
    "|pipe",
    ">gt",
    "[br",
    "{cb",
    ",comma",
    "?q",
    "? q",
    ":c",
    ": c",
    "back\\slash",
    "ctl\x01char",
    "nel\x85x",
    "ls\u2028x",
    "bom\ufeffx",
    "1e400",
    "-0",
    "+1",
    "1.0",
    "12345678901234567890",
    ".inf",
    ".NaN",
    "ends with colon:",
    "0o17",
    "+.5",
    "1__0",
    "0x_1F",
]


def _quoted(text: str) -> str:
    """`text` as a YAML double-quoted scalar, every non-ASCII character escaped."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _strings_doc() -> str:
    """The strings as PyYAML writes them (it leaves `1e3` plain: sops reads a float), and as
    double-quoted keys (JSON strings are YAML double-quoted scalars)."""
    creds = {f"s{i:02d}": s for i, s in enumerate(TRICKY_STRINGS)}
    doc = {"apiVersion": "v1", "credentials": {"strings": creds}, "plain": {"strings": creds}}
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=10_000)
    keys = "".join(f"    {_quoted(s)}: {i}\n" for i, s in enumerate(TRICKY_STRINGS))
    return f"{text}keys_secret:\n  map:\n{keys}"


def _floats_doc() -> str:
    rng = random.Random(20240501)
    values = [rng.uniform(-1e3, 1e3) for _ in range(150)]
    values += [rng.uniform(0, 1) * 10.0 ** rng.randint(-320, 300) for _ in range(150)]
    values += [float(rng.randint(-(10**17), 10**17)) for _ in range(30)]
    values += [x / 8 for x in range(-20, 20)] + [0.1, 0.2, 0.3, 1 / 3, 2 / 3, 100.0, 1e5, 1e-5]
    text = "[" + ", ".join(repr(v) for v in values) + "]"
    return f"apiVersion: v1\ncredentials:\n  floats: {text}\nplain:\n  floats: {text}\n"


COMMENTS = """\
# head comment
apiVersion: v1 # inline
credentials:
  # inside the encrypted part: sops encrypts this comment
  vapi:
    apiKey: sk-commented # trailing
    # between
    webhookSecret: whsec
  list:
    # before an item
    - one
    - two # after an item
# between top-level keys
spec:
  name: commented
  # foot comment
"""

UNICODE_KEYS = """\
apiVersion: v1
credentials:
  ключ: значение
  "clé:x": "v:1"
  a b: spaced
  "": empty key
  ünïcode_unencrypted: kept
  list:
    - {ключ: 1, "k:2": two}
spec:
  日本: 語
"""

TIMESTAMPS = """\
apiVersion: v1
credentials:
  when: 2024-01-01
  token: x
spec:
  created: 2024-01-01T10:00:00Z
"""

MERGE_KEY = """\
apiVersion: v1
credentials:
  token: <<
spec:
  name: <<
"""

DOCUMENTS: dict[str, Callable[[], str]] = {
    "org-one": lambda: yaml.safe_dump(org_doc("org-one"), sort_keys=False),
    "org-two": lambda: yaml.safe_dump(
        org_doc("org-two", extra_credentials={"twilio": {"accountSid": "AC1", "authToken": "t"}}),
        sort_keys=False,
    ),
    "kitchen": lambda: KITCHEN,
    "scalars": lambda: SCALARS,
    "strings": _strings_doc,
    "floats": _floats_doc,
    "comments": lambda: COMMENTS,
    "unicode-keys": lambda: UNICODE_KEYS,
    "timestamps": lambda: TIMESTAMPS,
    "merge-key": lambda: MERGE_KEY,
}
# sops reads a plain timestamp as a time (and encrypts it as type:time); it writes the string
# `<<` back as `!!merge <<` (which the loader refuses): the binary decrypts those
EXPECTED_FALLBACKS = {
    "timestamps": {"plain scalar: timestamp", "value type time"},
    "merge-key": {"plain scalar: merge key", "YAML tag or anchor", "output string <<"},
}
# sops 3.11 fails on some of its own files: an unencrypted -0.0 under a MAC that covers it is
# written back as `-0`, read as the integer 0 (MAC "0", not "-0"). Ours must fail alike.
BINARY_FAILS = {"encrypted-suffix/kitchen"}


@dataclass
class Corpus:
    root: Path
    identities: list[pyrage.x25519.Identity]
    key_files: list[Path]
    home: Path  # an empty HOME: no ssh keys, no default keys.txt
    files: dict[str, Path]  # "variant/document" -> file

    def env(self, key_file: Path | None = None, **extra: str) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.home)}
        if key_file is not None:
            env["SOPS_AGE_KEY_FILE"] = str(key_file)
        env.update(extra)
        return env

    @property
    def default_env(self) -> dict[str, str]:
        return self.env(self.key_files[1])  # the middle recipient: the first entry fails


# One pytest-xdist worker runs them all: the corpus below costs about 300 `sops encrypt` runs,
# which every worker that ran one of these tests paid again.
pytestmark = pytest.mark.xdist_group("sops-corpus")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("sops-corpus")
    home = root / "home"
    home.mkdir()
    identities = [pyrage.x25519.Identity.generate() for _ in range(RECIPIENTS)]
    key_files = []
    for i, ident in enumerate(identities):
        path = root / f"key{i}.txt"
        path.write_text(f"# created by the test\n{ident}\n")
        key_files.append(path)
    recipients = ",".join(str(i.to_public()) for i in identities)
    files: dict[str, Path] = {}
    jobs = []
    for variant, rule in VARIANTS.items():
        folder = root / variant
        folder.mkdir()
        (folder / ".sops.yaml").write_text(
            f"creation_rules:\n  - path_regex: \\.yaml$\n{rule}    age: {recipients}\n"
        )
        for name, make in DOCUMENTS.items():
            path = folder / f"{name}.yaml"
            path.write_text(make())
            files[f"{variant}/{name}"] = path
            jobs.append(path)
    for path in jobs:
        done = subprocess.run(
            [sops.sops_binary(), "encrypt", "-i", str(path)],
            cwd=path.parent,
            capture_output=True,
            text=True,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)},
        )
        assert done.returncode == 0, f"{path}: {done.stderr}"
    return Corpus(root, identities, key_files, home, files)


def assert_same(native_value: Any, binary_value: Any, where: str = "") -> None:
    """Equal values of equal types, mappings in the same key order."""
    assert type(native_value) is type(binary_value), (where, native_value, binary_value)
    if isinstance(native_value, dict):
        assert list(native_value) == list(binary_value), where
        for key in native_value:
            assert_same(native_value[key], binary_value[key], f"{where}.{key}")
    elif isinstance(native_value, list):
        assert len(native_value) == len(binary_value), where
        for i, (a, b) in enumerate(zip(native_value, binary_value, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(native_value, float):
        assert native_value == binary_value or (
            math.isnan(native_value) and math.isnan(binary_value)
        ), where
        assert math.copysign(1, native_value) == math.copysign(1, binary_value), where
    else:
        assert native_value == binary_value, where


def loaded(path: Path, out: bytes) -> dict[str, Any]:
    """`out` read by the spec loader's own YAML parsing."""
    doc, problems = parse_yaml(path, out)
    assert doc is not None, [str(p) for p in problems]
    return doc


@pytest.mark.parametrize("name", [f"{v}/{d}" for v in VARIANTS for d in DOCUMENTS])
def test_native_decrypts_like_the_binary(corpus: Corpus, name: str) -> None:
    path = corpus.files[name]
    data = path.read_bytes()
    env = corpus.default_env
    document = name.split("/")[1]
    if name in BINARY_FAILS:
        binary = run(lambda: sops.decrypt_bytes(path, data, env))
        assert not binary.ok
        assert run(lambda: native.decrypt_bytes(path, data, env)).message == binary.message
        with pytest.raises(native.Suspect):  # the native MAC check found it first
            native.decrypt_native(path, data, env)
        return
    expected = sops.decrypt_bytes(path, data, env)
    if document in EXPECTED_FALLBACKS:
        with pytest.raises(native.Fallback) as fell:
            native.decrypt_native(path, data, env)
        assert fell.value.reason in EXPECTED_FALLBACKS[document]
        assert native.decrypt_bytes(path, data, env) == expected  # the binary's own output
        return
    ours = native.decrypt_native(path, data, env)  # natively: no fallback
    assert_same(loaded(path, ours), loaded(path, expected))
    assert native.decrypt_bytes(path, data, env) == ours


def assert_same_json(ours: Any, meant: Any, where: str = "") -> None:
    """`ours` is `meant` as JSON values: numbers equal as doubles (sops's JSON writes 1e6 as
    1000000, its YAML as `1e+06`), everything else equal and of the same type. A value still
    encrypted in `ours` (the file as validated) is not compared."""
    if isinstance(ours, str) and ours.startswith("ENC["):
        return
    number = (int, float)
    if isinstance(meant, number) and not isinstance(meant, bool):
        assert isinstance(ours, number) and not isinstance(ours, bool), (where, ours, meant)
        if isinstance(ours, float) or isinstance(meant, float):  # JSON numbers are doubles
            assert float(ours) == float(meant), (where, ours, meant)
        else:
            assert ours == meant, (where, ours, meant)
    elif isinstance(meant, dict):
        assert isinstance(ours, dict) and list(ours) == list(meant), where
        for key in meant:
            assert_same_json(ours[key], meant[key], f"{where}.{key}")
    elif isinstance(meant, list):
        assert isinstance(ours, list) and len(ours) == len(meant), where
        for i, (a, b) in enumerate(zip(ours, meant, strict=True)):
            assert_same_json(a, b, f"{where}[{i}]")
    else:
        assert type(ours) is type(meant) and ours == meant, (where, ours, meant)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_numbers_are_read_as_sops_means_them_on_both_paths(corpus: Corpus, variant: str) -> None:
    """sops writes floats as Go's %g (`1e-05`, `1e+21`, `1e+06`), a YAML 1.2 form that YAML 1.1
    (PyYAML) reads as text. What sops means is its JSON output; the loader must read the same
    numbers from the native path's output, the binary's output, and the file itself (its
    unencrypted part)."""
    path = corpus.files[f"{variant}/floats"]
    data = path.read_bytes()
    env = corpus.default_env
    meant = json.loads(
        subprocess.run(
            [sops.sops_binary(), "decrypt", "--output-type", "json", str(path)],
            env=env,
            capture_output=True,
            check=True,
        ).stdout
    )
    written = data.decode()
    assert re.search(r"\b1e-05\b", written) or "ENC[" in written  # the form in question
    for decrypt in (native.decrypt_native, sops.decrypt_bytes):
        assert_same_json(loaded(path, decrypt(path, data, env)), meant, decrypt.__module__)
    file_as_validated = {k: v for k, v in loaded(path, data).items() if k != "sops"}
    assert_same_json(file_as_validated, meant, "file")


def test_every_recipient_and_every_key_source(corpus: Corpus, tmp_path: Path) -> None:
    """Each of the three recipients decrypts, its key taken from SOPS_AGE_KEY (several lines,
    comments, a foreign key first), SOPS_AGE_KEY_FILE, $XDG_CONFIG_HOME/sops/age/keys.txt
    or ~/.config/sops/age/keys.txt."""
    stranger = pyrage.x25519.Identity.generate()
    files = [corpus.files[f"{v}/kitchen"] for v in VARIANTS if f"{v}/kitchen" not in BINARY_FAILS]
    for i, ident in enumerate(corpus.identities):
        xdg = tmp_path / f"xdg{i}"
        (xdg / "sops" / "age").mkdir(parents=True)
        (xdg / "sops" / "age" / "keys.txt").write_text(f"{ident}\n")
        home = tmp_path / f"home{i}"
        (home / ".config" / "sops" / "age").mkdir(parents=True)
        (home / ".config" / "sops" / "age" / "keys.txt").write_text(f"# mine\n\n{ident}\r\n")
        environments = [
            corpus.env(SOPS_AGE_KEY=f"# a comment\n{stranger}\n\n{ident}\n"),
            corpus.env(corpus.key_files[i]),
            corpus.env(XDG_CONFIG_HOME=str(xdg)),
            {**corpus.env(), "HOME": str(home)},
        ]
        for env in environments:
            for path in files:
                data = path.read_bytes()
                ours = native.decrypt_native(path, data, env)
                assert_same(loaded(path, ours), loaded(path, sops.decrypt_bytes(path, data, env)))


def test_sources_the_native_path_cannot_use_fall_back(corpus: Corpus, tmp_path: Path) -> None:
    path = corpus.files["regex-maconly/org-one"]
    data = path.read_bytes()
    expected = loaded(path, sops.decrypt_bytes(path, data, corpus.default_env))
    key = str(corpus.identities[0])
    plugin_line = "AGE-PLUGIN-YUBIKEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
    cases: list[tuple[dict[str, str], str]] = [
        (corpus.env(SOPS_AGE_KEY_CMD=f"echo {key}"), "SOPS_AGE_KEY_CMD"),
        (corpus.env(corpus.key_files[0], SOPS_DECRYPTION_ORDER="pgp,age"), "SOPS_DECRYPTION_ORDER"),
        # a source with a plugin line is not used natively; sops drops or uses it: its verdict
        (corpus.env(SOPS_AGE_KEY=f"{plugin_line}\n{key}\n"), "identity source not used"),
    ]
    for env, reason in cases:
        with pytest.raises(native.Fallback) as fell:
            native.decrypt_native(path, data, env)
        assert fell.value.reason.startswith(reason)
        outcome = run(lambda env=env: native.decrypt_bytes(path, data, env))
        binary = run(lambda env=env: sops.decrypt_bytes(path, data, env))
        assert outcome.ok == binary.ok, (reason, outcome, binary)
        if outcome.ok:
            assert_same(loaded(path, outcome.out), expected)
    # a usable key elsewhere wins over an unusable source, natively
    env = corpus.env(corpus.key_files[2], SOPS_AGE_KEY=f"{plugin_line}\n")
    assert_same(loaded(path, native.decrypt_native(path, data, env)), expected)
    # ssh keys are tried by sops 3.11 too: with no matching age key, the binary decides
    home = tmp_path / "home-ssh"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("not really a key\n")
    env = {**corpus.env(tmp_path / "missing.txt"), "HOME": str(home)}
    with pytest.raises(native.Fallback, match="ssh"):
        native.decrypt_native(path, data, env)
    assert not run(lambda: native.decrypt_bytes(path, data, env)).ok


# -- broken files ------------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    out: bytes = b""
    message: str = ""


def run(fn: Callable[[], bytes]) -> Outcome:
    try:
        return Outcome(True, fn())
    except DecryptionError as exc:
        return Outcome(False, message=str(exc))


_VALUE = re.compile(rb"(?m)^(?!\s*mac:)(\s*[^\n]*?: )?ENC\[AES256_GCM,data:([A-Za-z0-9+/=]+)")


def _flip(data: bytes, at: int) -> bytes:
    old = data[at : at + 1]
    return data[:at] + (b"B" if old == b"A" else b"A") + data[at + 1 :]


def tamper_value(data: bytes) -> bytes:
    m = _VALUE.search(data)
    assert m is not None
    return _flip(data, m.start(2))


def tamper_tag(data: bytes) -> bytes:
    at = data.index(b",tag:") + 5
    return _flip(data, at)


def tamper_mac(data: bytes) -> bytes:
    at = data.index(b"mac: ENC[AES256_GCM,data:") + len(b"mac: ENC[AES256_GCM,data:")
    return _flip(data, at)


def tamper_lastmodified(data: bytes) -> bytes:
    return re.sub(rb'lastmodified: "(\d{4})', lambda m: b'lastmodified: "1999', data)


def swap_values(data: bytes) -> bytes:
    values = re.findall(rb"(?:apiKey|webhookSecret): (ENC\[[^\]]*\])", data)
    assert len(values) == 2
    a, b = values
    return data.replace(a, b"@@A@@").replace(b, a).replace(b"@@A@@", b)


def edit_plaintext(data: bytes) -> bytes:
    assert b"firstMessage: Hello!" in data
    return data.replace(b"firstMessage: Hello!", b"firstMessage: Hello?")


def drop_encrypted_value(data: bytes) -> bytes:
    return re.sub(rb"\n\s*webhookSecret: ENC\[[^\]]*\]", b"", data)


def tamper_age_stanzas(data: bytes) -> bytes:
    for m in re.finditer(rb"-----BEGIN AGE ENCRYPTED FILE-----", data):
        data = _flip(data, m.start() + 100)
    return data


TAMPERING: dict[str, tuple[Callable[[bytes], bytes], bool]] = {
    # name: (change, whether the native path itself must detect it)
    "tampered value": (tamper_value, True),
    "tampered tag": (tamper_tag, True),
    "tampered MAC": (tamper_mac, True),
    "tampered lastmodified": (tamper_lastmodified, True),
    "swapped values": (swap_values, True),
    "dropped encrypted value": (drop_encrypted_value, True),
    "tampered age stanzas": (tamper_age_stanzas, False),
}


def _checked_failure(outcome: Outcome, path: Path, secrets: list[str]) -> None:
    assert not outcome.ok
    assert "\n" not in outcome.message
    assert outcome.message.startswith(f"{path}: "), outcome.message
    assert "Traceback" not in outcome.message
    for secret in secrets:
        assert secret not in outcome.message


@pytest.mark.parametrize("variant", ["regex-maconly", "regex", "default"])
@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_gets_the_binary_verdict(corpus: Corpus, variant: str, case: str) -> None:
    path = corpus.files[f"{variant}/org-one"]
    change, native_detects = TAMPERING[case]
    data = change(path.read_bytes())
    env = corpus.default_env
    binary = run(lambda: sops.decrypt_bytes(path, data, env))
    ours = run(lambda: native.decrypt_bytes(path, data, env))
    assert not binary.ok
    _checked_failure(ours, path, ["key-org-one", "whsec-org-one"])
    assert ours.message == binary.message
    if native_detects:
        with pytest.raises(native.Suspect):
            native.decrypt_native(path, data, env)


@pytest.mark.parametrize(
    "variant", ["regex-maconly", "regex", "regex-alternation", "encrypted-suffix"]
)
def test_edited_plaintext_fails_only_where_the_mac_covers_it(corpus: Corpus, variant: str) -> None:
    path = corpus.files[f"{variant}/org-one"]
    data = edit_plaintext(path.read_bytes())
    env = corpus.default_env
    binary = run(lambda: sops.decrypt_bytes(path, data, env))
    ours = run(lambda: native.decrypt_bytes(path, data, env))
    assert ours.ok == binary.ok == ("mac_only_encrypted: true" in VARIANTS[variant])
    if ours.ok:
        assert_same(loaded(path, ours.out), loaded(path, binary.out))
        assert_same(loaded(path, native.decrypt_native(path, data, env)), loaded(path, binary.out))
    else:
        assert ours.message == binary.message
        with pytest.raises(native.Suspect):
            native.decrypt_native(path, data, env)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_wrong_or_missing_key_is_reported_natively(corpus: Corpus, variant: str) -> None:
    path = corpus.files[f"{variant}/org-one"]
    data = path.read_bytes()
    stranger = corpus.root / "stranger.txt"
    if not stranger.exists():
        stranger.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    for env in (
        corpus.env(stranger),  # wrong key
        corpus.env(),  # no key at all
        corpus.env(corpus.root / "no-such-file.txt"),  # a key file that is not there
    ):
        binary = run(lambda env=env: sops.decrypt_bytes(path, data, env))
        ours = run(lambda env=env: native.decrypt_bytes(path, data, env))
        _checked_failure(ours, path, [])
        assert ours.message == binary.message
        with pytest.raises(DecryptionError) as failed:
            native.decrypt_native(path, data, env)
        assert not isinstance(failed.value, native.Suspect)


@pytest.mark.parametrize("variant", ["regex-maconly", "default"])
def test_truncated_and_foreign_files_get_the_binary_verdict(corpus: Corpus, variant: str) -> None:
    path = corpus.files[f"{variant}/kitchen"]
    whole = path.read_bytes()
    env = corpus.default_env
    cuts = [whole[: len(whole) * k // 10] for k in range(1, 10)]
    cuts += [whole[:-1], whole[:-20], whole[: whole.index(b"sops:")]]
    cuts += [b"", b"a: [1\n", b"just: yaml\n", b"- a list\n", b"sops: null\n", b"\xff\xfe"]
    for data in cuts:
        binary = run(lambda data=data: sops.decrypt_bytes(path, data, env))
        ours = run(lambda data=data: native.decrypt_bytes(path, data, env))
        assert ours.ok == binary.ok, (len(data), ours, binary)
        if ours.ok:
            assert_same(loaded(path, ours.out), loaded(path, binary.out))
        else:
            _checked_failure(ours, path, ["sk-live-kitchen-1", "hunter2"])
            assert ours.message == binary.message


# -- through the loader ------------------------------------------------------------------------


@pytest.fixture
def fresh_stats() -> Iterator[None]:
    native.reset_stats()
    yield
    native.reset_stats()


def test_load_tree_decrypts_natively_by_default(
    specs: SpecDir, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_stats: None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ssh keys or default keys.txt of the host
    for i in range(12):
        specs.write(org_doc(f"org-{i:02d}"))
    ours = load_tree(specs.root)
    assert native.stats() == {"native": 12}
    theirs = load_tree(specs.root, decrypt=sops.decrypt_bytes)
    assert ours.problems == theirs.problems == []
    assert [s.org for s in ours.specs] == [s.org for s in theirs.specs]
    for a, b in zip(ours.specs, theirs.specs, strict=True):
        assert a.org.spec.credentials == b.org.spec.credentials


def test_load_tree_decrypts_natively_in_its_thread_and_sends_the_rest_to_sops_side_by_side(
    specs: SpecDir, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_stats: None
) -> None:
    """Native decryption runs in the caller's thread (it holds the interpreter lock: threads
    would only take turns); a file it cannot settle alone is decrypted by `sops` in the pool,
    several at once, and counted once."""
    import threading

    monkeypatch.setenv("HOME", str(tmp_path))
    for i in range(6):
        specs.write(org_doc(f"org-{i:02d}"))
    natively = native.decrypt_native_tree
    native_threads: set[str] = set()
    binary_threads: set[str] = set()

    def some_to_the_binary(path: Path, data: bytes, env: Any = None, **kw: Any) -> dict[str, Any]:
        native_threads.add(threading.current_thread().name)
        if path.name in ("org-01.yaml", "org-04.yaml"):
            raise native.Fallback("this test sends it to the binary")
        return natively(path, data, env, **kw)

    binary = sops.decrypt_bytes

    def counted_binary(path: Path, data: bytes, env: Any = None) -> bytes:
        binary_threads.add(threading.current_thread().name)
        return binary(path, data, env)

    monkeypatch.setattr(native, "decrypt_native_tree", some_to_the_binary)
    monkeypatch.setattr(sops, "decrypt_bytes", counted_binary)
    loaded = load_tree(specs.root)
    assert loaded.problems == [] and len(loaded.specs) == 6
    assert native.stats() == {
        "native": 4,
        "fallback": 2,
        "fallback:this test sends it to the binary": 2,
    }
    assert threading.current_thread().name in native_threads
    assert binary_threads and threading.current_thread().name not in binary_threads


def test_decrypted_credentials_joined_to_the_checked_org_equal_a_whole_validation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The loader validates an org once with its credentials masked, then only the decrypted
    credentials: the result is the org a validation of the whole decrypted document gives
    (every provider, templated assistants), and a credential that fails, or credentials of
    another shape, are validated with the whole document as before (the same problems)."""
    from reconciler.spec import loader
    from tests.helpers import ROOT

    examples = ROOT / "specs" / "examples"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(examples / "demo.agekey"))
    checked, sources = loader._validate(examples, None, docs := {})
    assert checked.specs and not checked.problems
    for spec in checked.specs:
        made = (spec.org.templates, spec.org.overridden)
        args = (spec.path, sources[spec.path], None, docs[spec.path], checked.templates, made)
        joined, problems = loader._decrypt_one(*args, checked=spec.org)
        whole, whole_problems = loader._decrypt_one(*args)
        assert joined is not None and whole is not None and not problems and not whole_problems
        assert joined == whole
        assert joined.spec.credentials.revealed() == whole.spec.credentials.revealed()
        assert (joined.templates, joined.overridden) == (whole.templates, whole.overridden)
        before = spec.org.templates
        joined.made_from({"other": "x@1"})  # its own record, not the checked org's
        assert spec.org.templates == before

    spec = next(s for s in checked.specs if s.org.spec.credentials.twilio is not None)
    made = (spec.org.templates, spec.org.overridden)
    real = native.decrypt_document
    for change in (
        lambda c: c["vapi"].update(apiKey="has a space "),  # fails its own check
        lambda c: c.update(unknown={"x": "y"}),  # another shape, refused by the model
        lambda c: c.pop("vapi"),  # another shape: the org's own check needs the key
    ):

        def changed(*a: Any, change: Callable[[Any], None] = change, **k: Any) -> Any:
            tree = real(*a, **k)
            change(tree["spec"]["credentials"])
            return tree

        monkeypatch.setattr(native, "decrypt_document", changed)
        args = (spec.path, sources[spec.path], None, docs[spec.path], checked.templates, made)
        joined, problems = loader._decrypt_one(*args, checked=spec.org)
        whole, whole_problems = loader._decrypt_one(*args)
        assert joined is None and whole is None
        assert problems == whole_problems and problems


@pytest.mark.parametrize("path", ["native", "binary"])
def test_a_number_sops_rewrote_reaches_vapi_as_that_number_and_stays_converged(
    specs: SpecDir, cli: Any, emulator: str, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """`temperature: 0.000001` becomes `1e-06` when sops encrypts the file: Vapi gets the
    number (not the text "1e-06"), and what Vapi answers compares equal, so the next plan has
    nothing to do."""
    if path == "binary":  # every decrypt through the sops binary
        monkeypatch.setattr(native, "decrypt_native_tree", _refuse_native)
    doc = org_doc("acme")
    doc["spec"]["assistants"]["inbound"]["model"] = {
        "provider": "openai",
        "model": "gpt-4o",
        "temperature": 0.000001,
    }
    doc["spec"]["assistants"]["inbound"]["metadata"] = {"limit": 1e100, "calls": 1000000.0}
    written = specs.write(doc).read_text()
    for form in ("temperature: 1e-06", "limit: 1e+100", "calls: 1e+06"):  # as sops wrote them
        assert form in written, written
    applied = cli("apply", str(specs.root))
    assert applied.code == 0, applied.out + applied.err
    [inbound] = [a for a in live(emulator, key_of(doc)) if a["name"] == "acme inbound"]
    assert inbound["model"]["temperature"] == 1e-06
    assert inbound["metadata"]["limit"] == 1e100 and inbound["metadata"]["calls"] == 1000000
    again = cli("plan", str(specs.root), "--detailed-exitcode")
    assert again.code == 0, again.out + again.err  # no perpetual diff


def _refuse_native(path: Path, data: bytes, env: Any = None, **kw: Any) -> dict[str, Any]:
    raise native.Fallback("this test decrypts with the binary")
