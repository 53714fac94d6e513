"""The spec loader reads with libyaml (`_CSpecLoader`) when it can: it must give exactly what
the pure-Python `SpecLoader` gives, document for document (types included) and problem for
problem, over a corpus of real, broken and hostile spec files and generated texts. Hostile
inputs must be refused by the libyaml path itself, not only by the fallback."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.spec import loader
from reconciler.spec.loader import MAX_DEPTH, parse_yaml
from tests.helpers import FIXTURES, ROOT

C_LOADER = loader._C_LOADER
pytestmark = pytest.mark.skipif(C_LOADER is None, reason="PyYAML built without libyaml")

HEAD = "apiVersion: reconciler/v1\nkind: Organization\nmetadata:\n  slug: x\n"

# Hostile or odd texts, each parsed both ways (the libyaml path must refuse the hostile ones).
HOSTILE: dict[str, str] = {
    "alias bomb": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9)
    ),
    "alias to a scalar": "a: &x 1\nb: *x\n",
    "undefined alias": "a: *nowhere\n",
    "merge key": "base: &b {x: 1}\nother:\n  <<: *b\n",
    "merge key without alias": "other:\n  <<: {x: 1}\n",
    "duplicate key": "a: 1\nb: 2\na: 3\n",
    "duplicate nested key": "a:\n  b: 1\n  b: 1\n",
    "duplicate key, one quoted": "a: 1\n'a': 2\n",
    f"{MAX_DEPTH + 1} levels of lists": "a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
    f"{MAX_DEPTH + 1} levels of maps": "a: " + "{b: " * (MAX_DEPTH + 1) + "}" * (MAX_DEPTH + 1),
    "200,000 open brackets": "a: " + "[" * 200_000,
    "deep block maps": "".join(" " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 2)) + "  v\n",
    "int key": "1: a\n",
    "bool key": "true: a\n",
    "null key": "~: a\n",
    "date key": "2024-01-01: a\n",
    "list key": "? [a]\n: b\n",
    "binary": "a: !!binary aGVsbG8=\n",
    "set": "a: !!set {x, y}\n",
    "omap": "a: !!omap [x: 1]\n",
    "python tag": "a: !!python/object:os.system ls\n",
    "unknown tag": "a: !vapi x\n",
    "integer too long": "a: " + "9" * 5000 + "\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "control character": "a: x\x1by\n",
    "nul": "a: x\x00y\n",
    "tab indentation": "a:\n\tb: 1\n",
    "unclosed quote": "a: 'x\n",
    "YAML 1.3 directive": "%YAML 1.3\n---\na: 1\n",
    "YAML 2.0 directive": "%YAML 2.0\n---\na: 1\n",
    "bad escape": 'a: "\\q"\n',
    "surrogate escape": 'a: "\\ud800"\n',
    "BOM inside": "a: 1\n\ufeffb: 2\n",
    "NEL": "a: x\x85y\n",
    "line separator": "a: x\u2028 y\n",
    "non-finite": "a: .inf\nb: -.Inf\nc: .nan\nd: 1e400\n",
    "scalar document": "just text\n",
    "list document": "- a\n- b\n",
    "empty": "",
    "comments only": "# nothing\n",
    "long simple key": "a" * 1100 + ": 1\n",
    "empty scalar tagged !": "a: !\nb: ! ''\nc: [! 1]\n",
    "tag before a comma": "a: [!, 1]\n",
    "tag before a bracket": "a: [!!str]\n",
    "block scalar header and comment": "a: |#\nb: >-#\n  x\n",
    "document tagged !": "!",
    "tab after a value": "a: b\t\n",
    "tab as a separator": "a:\tb\n",
    "tab in a flow list": "a: [1,\t2]\n",
    "tab in a quoted value": 'a: "x\ty"\n',
}

NUMBERS = [
    "1e400",
    "-1e400",
    "1e-400",
    "1e-06",
    "1e+100",
    "1.5e3",
    "1E3",
    "1.0e+3",
    "1e3.5",
    "0x10",
    "0X10",
    "0o17",
    "017",
    "010",
    "0b101",
    "08",
    "09",
    "1_000",
    "0x_1f",
    "+12",
    "-0",
    "1:20",
    "190:20:30",
    "-1:30",
    ".5",
    "5.",
    "1.",
    "-.5",
    "+.5",
    ".inf",
    "-.inf",
    ".INF",
    ".NaN",
    ".nan",
    "inf",
    "nan",
    "1,000",
    "0.1e1",
    "1__0",
    "0.",
    "-0.0",
    "12e",
    "e12",
    "yes",
    "no",
    "Yes",
    "NO",
    "on",
    "off",
    "ON",
    "y",
    "n",
    "true",
    "False",
    "TRUE",
    "null",
    "Null",
    "~",
    "",
    "2024-01-01",
    "2024-01-01T10:00:00Z",
    "2024-1-1",
    "12:30",
    "=",
    "<<",
    "'010'",
    '"0x10"',
    "!!str 010",
    "!!int '12'",
    "!!float '1'",
    "!!bool yes",
    "!!null ''",
]


def _typed(value: Any) -> Any:
    """`value` with its types spelled out: 1, 1.0 and True are three different documents."""
    if isinstance(value, dict):
        return ("dict", [(_typed(k), _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else repr(value))
    return (type(value).__name__, value)


def _outcome(load: Any, text: str) -> tuple[str, Any]:
    try:
        return "doc", _typed(load(text))
    except yaml.YAMLError as exc:
        return "refused", type(exc).__name__
    except Exception as exc:
        return "failed", type(exc).__name__


def _c_path(text: str) -> tuple[str, Any]:
    """What the libyaml path makes of `text`, when `parse_yaml` lets it read `text` at all."""
    if loader._python_only(text):
        return "routed to SpecLoader", None
    return _outcome(_c_only, text)


def _python_only(text: str) -> Any:
    return yaml.load(text, Loader=loader.SpecLoader)  # noqa: S506 - a SafeLoader subclass


def _c_only(text: str) -> Any:
    return yaml.load(text, Loader=C_LOADER)  # noqa: S506 - the safe constructors


def _parse_python_only(monkeypatch: pytest.MonkeyPatch, text: str) -> Any:
    with monkeypatch.context() as m:
        m.setattr(loader, "_C_LOADER", None)
        return parse_yaml(Path("x.yaml"), text)


def _parsed(result: tuple[Any, list[loader.Problem]]) -> tuple[Any, list[str]]:
    doc, problems = result
    return (None if doc is None else _typed(doc)), [str(p) for p in problems]


def _corpus() -> Iterator[tuple[str, str]]:
    files = sorted(
        p
        for base in (ROOT / "specs", ROOT / "examples", FIXTURES, ROOT / "deploy")
        for p in base.rglob("*")
        if p.suffix in (".yaml", ".yml") and p.is_file()
    )
    for path in files:
        data = path.read_bytes()
        if len(data) <= loader.MAX_SPEC_BYTES:
            try:
                yield str(path.relative_to(ROOT)), data.decode("utf-8")
            except UnicodeDecodeError:
                continue
    yield from HOSTILE.items()
    for n in NUMBERS:
        yield f"number {n!r}", f"{HEAD}v: {n}\nl: [{n}]\nm: {{k: {n}}}\n"
        yield f"key {n!r}", f"{HEAD}{n or 'x'}: v\n"
    yield "crlf", HEAD.replace("\n", "\r\n") + "v: 'a\r\n  b'\r\n"
    yield "folded and literal", f"{HEAD}a: >\n  x\n  y\n\n  z\nb: |-\n  p\n   q\n"
    yield "escapes", f'{HEAD}a: "\\t\\u00e9\\x41\\/\\N\\_\\L\\P\\e\\0"\n'
    yield "anchor without alias", f"{HEAD}a: &x 1\nb: &y [2]\n"
    yield f"{MAX_DEPTH} levels", f"{HEAD}a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)


CORPUS = list(_corpus())


def test_the_corpus_has_the_real_specs_and_the_hostile_files() -> None:
    names = [name for name, _ in CORPUS]
    assert any(n.startswith("specs/examples/") for n in names)
    assert sum(n.startswith("tests/fixtures/hostile/") for n in names) >= 30
    assert sum(n.startswith("tests/fixtures/bad/") for n in names) >= 80


@pytest.mark.parametrize(("name", "text"), CORPUS, ids=[n for n, _ in CORPUS])
def test_libyaml_reads_what_spec_loader_reads_or_refuses(name: str, text: str) -> None:
    """Where the libyaml path gives a document, it is SpecLoader's document, types included:
    it may refuse more (SpecLoader then decides), never accept what SpecLoader refuses."""
    c = _c_path(text)
    if c[0] == "doc":
        assert c == _outcome(_python_only, text), name


@pytest.mark.parametrize(("name", "text"), CORPUS, ids=[n for n, _ in CORPUS])
def test_parse_yaml_gives_what_the_python_loader_gives(
    name: str, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Document and problems (words, FILE:LINE:COL, "did you mean") the same either way."""
    assert _parsed(parse_yaml(Path("x.yaml"), text)) == _parsed(
        _parse_python_only(monkeypatch, text)
    ), name


@pytest.mark.parametrize(
    "name",
    [
        "alias bomb",
        "alias to a scalar",
        "merge key",
        "merge key without alias",
        "duplicate key",
        "duplicate nested key",
        "duplicate key, one quoted",
        f"{MAX_DEPTH + 1} levels of lists",
        f"{MAX_DEPTH + 1} levels of maps",
        "200,000 open brackets",
        "deep block maps",
        "int key",
        "bool key",
        "date key",
        "list key",
        "binary",
        "set",
        "python tag",
        "integer too long",
        "two documents",
    ],
)
def test_the_libyaml_path_refuses_hostile_input_itself(name: str) -> None:
    """Not left to the fallback: the alias, depth, key and type rules run on the libyaml path."""
    with pytest.raises(yaml.YAMLError):
        _c_only(HOSTILE[name])


@pytest.mark.parametrize(
    "name",
    [
        "tab after a value",
        "tab as a separator",
        "tab in a flow list",
        "BOM inside",
        "tag before a comma",
        "block scalar header and comment",
    ],
)
def test_texts_where_the_scanners_differ_are_read_by_spec_loader(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libyaml reads these where SpecLoader refuses them (or reads them otherwise): they
    never reach the libyaml path, and keep SpecLoader's verdict."""
    text = HOSTILE[name]
    assert _outcome(_c_only, text) != _outcome(_python_only, text)
    assert _c_path(text)[0] == "routed to SpecLoader"
    doc, problems = parse_yaml(Path("x.yaml"), text)
    if name != "BOM inside":
        assert doc is None and problems  # PyYAML refuses a tab there
    assert _parsed((doc, problems)) == _parsed(_parse_python_only(monkeypatch, text))


_ROUTING = "\t\ufeff\x85\u2028\u2029|>#!-+09 ,[]{}\nab\u00e9"


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=_ROUTING, max_size=30))
def test_the_routing_check_is_its_pattern(text: str) -> None:
    """`_python_only`, which searches each branch only when its character is there, routes
    exactly the texts `_PYTHON_ONLY` matches (over the characters each branch turns on)."""
    assert loader._python_only(text) is bool(loader._PYTHON_ONLY.search(text))


ROUTED = {
    **HOSTILE,
    "block header, chomping and indent, comment": "a: |-2#x\n",
    "folded header, space, comment": "a: >+ #\n",
    "tag in a flow list": "[!x, 1]\n",
    "tag before a comma": "a: !b,\n",
    "non-ASCII and a line separator": "é\u2028",
}


@pytest.mark.parametrize("name", sorted(ROUTED))
def test_the_routing_check_is_its_pattern_on_the_corpus(name: str) -> None:
    text = ROUTED[name]
    assert loader._python_only(text) is bool(loader._PYTHON_ONLY.search(text)), name


_SCALARS = st.sampled_from(
    [
        "yes",
        "No",
        "on",
        "~",
        "null",
        "1e3",
        "1e-06",
        "0x1F",
        "0o17",
        "1_000",
        "2024-01-01",
        ".inf",
        "-.5",
        "+1",
        "<<",
        "=",
        "name",
        "outbound",
        "1e400",
        "12:30:00",
        "true",
        "",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_SCALARS, st.text(max_size=12)), max_size=8))
def test_a_remembered_tag_is_the_resolvers(texts: list[str]) -> None:
    """`_plain_tag` remembers the resolver's tag of a key: asked again, as a key or a value,
    the same answer (from a table of its own, so that every short key is remembered)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(loader, "_PLAIN_TAGS", {})
        for again in (False, True):
            for text in texts:
                want = loader._TYPER.resolve(yaml.ScalarNode, text, (True, False))
                assert loader._plain_tag(text, key=True) == want, text
                assert loader._plain_tag(text) == want, text
                if again and len(text) <= loader._PLAIN_TAG_CHARS:
                    assert loader._PLAIN_TAGS[text] == want, text


def test_the_remembered_tags_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile file of many distinct (or long) scalars cannot grow the memo past its bound."""
    monkeypatch.setattr(loader, "_PLAIN_TAGS", {})
    long = "y" * (loader._PLAIN_TAG_CHARS + 1)
    assert loader._plain_tag(long, key=True) == loader._STR_TAG
    assert long not in loader._PLAIN_TAGS
    for i in range(loader._PLAIN_TAGS_KEPT + 500):
        loader._plain_tag(f"n{i}", key=True)
    assert len(loader._PLAIN_TAGS) == loader._PLAIN_TAGS_KEPT
    assert loader._plain_tag("1e3", key=True) == loader._FLOAT_TAG  # past the bound: right


SECRETS = ("0f8fad5b-d9cb-469f-a165-70867728950e", "fa8d3c2b9e0147d6a1b2c3d4e5f60718", "no-1")


def test_no_value_is_remembered_only_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value may be a decrypted secret (the loader reads sops's output and checks decrypted
    trees): it must not outlive the run in the process-wide memo. Secrets whose first
    character a YAML 1.1 type starts with (a digit, `f`, `n`) are read both ways, and only
    the keys around them are remembered."""
    from reconciler.secrets.native import writes_plain

    monkeypatch.setattr(loader, "_PLAIN_TAGS", {})
    creds = {"vapi": {"apiKey": SECRETS[0], "webhookSecret": SECRETS[1]}, "nested": SECRETS[2]}
    text = yaml.safe_dump({"kind": "Organization", "spec": {"credentials": creds}})
    doc, problems = parse_yaml(Path("x.yaml"), text)
    assert doc is not None and not problems
    assert loader.reads_back_as_is(doc, writes_plain)
    for secret in SECRETS:
        assert loader._reads_as_text(secret, writes_plain)
    assert loader._PLAIN_TAGS, "the keys were remembered"
    assert not set(SECRETS) & set(loader._PLAIN_TAGS)
    assert "nested" in loader._PLAIN_TAGS  # a key: the file's own text


def test_hostile_input_costs_little_on_the_libyaml_path() -> None:
    import time

    for name in ("alias bomb", "200,000 open brackets", f"{MAX_DEPTH + 1} levels of maps"):
        t0 = time.process_time()
        with pytest.raises(yaml.YAMLError):
            _c_only(HOSTILE[name])
        assert time.process_time() - t0 < 0.5, name


def test_real_specs_are_read_by_libyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is the one taken: with SpecLoader out of reach, real specs still load."""

    class Unreachable(loader.SpecLoader):
        def __init__(self, stream: str | bytes) -> None:
            raise AssertionError("the pure-Python loader was used")

    monkeypatch.setattr(loader, "SpecLoader", Unreachable)
    specs = [
        (n, t)
        for n, t in CORPUS
        if n.startswith("specs/examples/") and loader.is_spec_name(Path(n).name)
    ]
    assert len(specs) >= 3
    for name, text in specs:
        doc, problems = parse_yaml(Path(name), text)
        assert doc is not None and not problems, name
        template = name.startswith("specs/examples/templates/")
        assert doc["kind"] == ("AssistantTemplate" if template else "Organization")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v: 1e-06", 1e-06),
        ("v: 1e+100", 1e100),
        ("v: 1e400", "1e400"),  # past a double: text, as yaml.v3 keeps it
        ("v: 0x10", 16),
        ("v: 010", 8),  # YAML 1.1 octal, as PyYAML reads it
        ("v: 0o17", "0o17"),
        ("v: yes", True),
        ("v: 'yes'", "yes"),
        ("yes: v", "v"),  # a YAML 1.1 boolean key stays the text written
        ("v: 2024-01-01", "2024-01-01"),
        ("v: 1_000", 1000),
    ],
)
def test_numbers_and_booleans_as_the_project_reads_them(text: str, expected: Any) -> None:
    for load in (_c_only, _python_only):
        doc = load(text)
        got = doc.get("v", doc.get("yes"))
        assert _typed(got) == _typed(expected), (load.__name__, text)


_ATOMS = st.sampled_from(
    [
        "a",
        "b",
        "k",
        ":",
        ": ",
        " ",
        "  ",
        "\n",
        "\n  ",
        "- ",
        "-",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&x ",
        "*x",
        "<<",
        "? ",
        "#",
        "'",
        '"',
        "\\",
        "|",
        ">",
        "!!str ",
        "!!int ",
        "!",
        "%",
        "---",
        "...",
        "1",
        "0x1f",
        "1e3",
        "010",
        ".inf",
        "yes",
        "~",
        "null",
        "\t",
        "\r\n",
        "2024-01-01",
        "!x ",
        "!!binary ",
        "&",
        "*",
        "@",
        "`",
        "%YAML 1.1\n",
        "%TAG !e! tag:x,2000:\n",
        "!e!y ",
        "|2\n",
        ">+\n",
        "|-\n  ",
        "\\t",
        "\\u00e9",
        "\\x4",
        "\\N",
        ".5",
        "1_0",
        "0o7",
        "+1",
        "-.inf",
        "\u3000",
        "\x00",
        "\x7f",
        "\U0001f600",
        "é",
        "\u00a0",
        "\ufeff",
        "\x85",
    ]
)


def _generated_texts(test: Any) -> Any:
    """Texts of up to 40 atoms (`SPEC_CLOADER_EXAMPLES` of them, 400 by default)."""
    return settings(
        max_examples=int(os.environ.get("SPEC_CLOADER_EXAMPLES", "400")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )(given(st.lists(_ATOMS, max_size=40).map("".join))(test))


@_generated_texts
def test_generated_texts_read_the_same_either_way(text: str) -> None:
    c = _c_path(text)
    if c[0] == "doc":
        assert c == _outcome(_python_only, text)
    built = _events_path(text)  # the event builder too (`_from_events`)
    if built[0] == "doc":
        assert built == _outcome(_python_only, text)
    with pytest.MonkeyPatch.context() as m:
        both = _parsed(parse_yaml(Path("x.yaml"), text))
        m.setattr(loader, "_C_LOADER", None)
        assert both == _parsed(parse_yaml(Path("x.yaml"), text))


# -- the event builder (`loader._from_events`), before `_CSpecLoader` ----------------------------


def _events_path(text: str) -> tuple[str, Any]:
    if loader._python_only(text):
        return "routed to SpecLoader", None
    built = loader._from_events(text)
    return ("not simple", None) if built is loader._NOT_SIMPLE else ("doc", _typed(built))


@pytest.mark.parametrize(("name", "text"), CORPUS, ids=[n for n, _ in CORPUS])
def test_the_event_builder_reads_what_spec_loader_reads_or_passes(name: str, text: str) -> None:
    """Where the event builder gives a document, it is SpecLoader's, types included; whatever
    it does not build (a tag, an anchor, a bad key, an error) is left to the loaders."""
    built = _events_path(text)
    if built[0] == "doc":
        assert built == _outcome(_python_only, text), name


def test_the_event_builder_builds_the_real_specs() -> None:
    real = [(n, t) for n, t in CORPUS if n.startswith(("specs/examples/", "examples/"))]
    read = [(n, t) for n, t in real if not loader._python_only(t)]
    assert len(read) >= len(real) // 2
    for name, text in read:
        assert _events_path(text)[0] == "doc", name


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_the_event_builder_leaves_hostile_input_to_the_loaders(name: str) -> None:
    text = HOSTILE[name]
    built = _events_path(text)
    assert built[0] != "doc" or built == _outcome(_python_only, text), name


# -- the document handed to `secrets.native` (`same_tree`): one parse of an encrypted spec ------


def _v3(text: str) -> tuple[str, Any]:
    from reconciler.secrets.native import Fallback, parse_document

    try:
        return "tree", _typed(parse_document(text.encode("utf-8")))
    except Fallback as exc:
        return "fallback", exc.reason


def _reused(text: str) -> tuple[str, Any]:
    """What the native path decrypts from, given what the loader read: the loader's document
    when `same_tree` takes it, else "parsed again"."""
    from reconciler.secrets.native import same_tree

    if loader._python_only(text):
        return "parsed again", None
    try:
        doc, typed = loader._load_typed(text)
    except (yaml.YAMLError, RecursionError):
        return "parsed again", None
    if typed is None or not isinstance(doc, dict):
        return "parsed again", None
    tree = same_tree(doc, typed)
    return ("parsed again", None) if tree is None else ("tree", _typed(tree))


def _holds_same_tree(text: str) -> None:
    """The loader's document stands for yaml.v3's reading only when it is that reading, types
    and key order included; never where the native parser would send the file to sops."""
    reused = _reused(text)
    if reused[0] == "tree":
        assert reused == _v3(text), text


@pytest.mark.parametrize(("name", "text"), CORPUS, ids=[n for n, _ in CORPUS])
def test_the_loaders_document_stands_for_yaml_v3s_only_when_it_is_it(name: str, text: str) -> None:
    _holds_same_tree(text)


@_generated_texts
def test_generated_texts_stand_for_yaml_v3s_only_when_they_are_it(text: str) -> None:
    _holds_same_tree(HEAD + "v: " + text)
    _holds_same_tree(text)


_SCALARS_BOTH_WAYS = [
    *NUMBERS,
    *("yes", "no", "on", "off", "y", "n", "true", "True", "FALSE", "~", "null", "NULL", ""),
    *("0777", "08", "0o17", "0x1F", "0b101", "1_000", "1e3", "1e-06", ".5", "+1", "-0"),
    *("2024-01-01", "12:30", "1:30:00", "9223372036854775808", "18446744073709551616"),
    *("3.11.0", "ENC[AES256_GCM,data:YQ==,iv:YQ==,tag:YQ==,type:str]", "plain words"),
]


@pytest.mark.parametrize("text", _SCALARS_BOTH_WAYS)
def test_each_scalar_as_a_value_and_as_a_key(text: str) -> None:
    for doc in (
        f"{HEAD}v: {text}\nl: [{text}]\nm: {{k: {text}}}\nq: '{text}'\n",
        f"{HEAD}{text or 'x'}: v\n",
        f"{HEAD}spec:\n  a: {text}\n  b:\n    - {text}\n",
    ):
        _holds_same_tree(doc)


def test_the_loader_and_the_native_parser_bound_depth_alike() -> None:
    """`same_tree` takes a document the loader read within its depth bound as one the native
    parser reads: the two bounds must be one."""
    from reconciler.secrets.native import _base

    assert loader.MAX_DEPTH == _base.MAX_DEPTH
    for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1):
        text = f"{HEAD}a: " + "[" * depth + "]" * depth + "\n"
        _holds_same_tree(text)


def test_a_zero_keeps_its_sign() -> None:
    from reconciler.secrets.native import same_tree

    assert same_tree({"v": 0.0}, [("-0.0", 0.0, False)]) is None
    assert same_tree({"v": -0.0}, [("-0.0", -0.0, False)]) == {"v": -0.0}


def test_the_real_specs_are_decrypted_from_the_loaders_document(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The example specs (SOPS-encrypted) are parsed once: the native path decrypts from the
    document the loader read, and gives the orgs a second parse gives."""
    from reconciler.secrets import native

    examples = ROOT / "specs" / "examples"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(examples / "demo.agekey"))
    calls: list[int] = []
    real_parse = native.parse_document

    def counted(data: bytes) -> dict[str, Any]:
        calls.append(1)
        return real_parse(data)

    monkeypatch.setattr(native, "parse_document", counted)
    once = loader.load_tree(examples)
    assert once.specs and not once.problems
    assert calls == []  # no file parsed a second time
    monkeypatch.setattr(native, "same_tree", lambda doc, typed: None)
    twice = loader.load_tree(examples)
    assert len(calls) == len(twice.specs)
    assert [(s.path, s.org) for s in once.specs] == [(s.path, s.org) for s in twice.specs]
    for a, b in zip(once.specs, twice.specs, strict=True):
        assert a.org.spec.credentials.revealed() == b.org.spec.credentials.revealed()
        assert _typed(a.org.model_dump()) == _typed(b.org.model_dump())  # 1, 1.0, True apart
