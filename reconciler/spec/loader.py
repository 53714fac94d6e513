"""Finding, parsing, checking and decrypting spec files. Problems are collected, not raised,
so one broken file never hides the others.

Bounds: a broken or hostile file costs little and stays a few lines about that file.

- **Regular files inside the tree.** Discovery walks the specs directory (resolved first; the
  root itself may be a symlink) and reads `*.yaml` / `*.yml` (any case; `.sops.yaml` and
  `.sops.yml` are skipped). A symlink is followed only when its target resolves inside the
  resolved specs directory; one that leads outside is refused unopened; a dangling or looping
  symlink is one problem; a directory reached twice is walked once. Only regular files are
  opened (never a FIFO or a device), with O_NOFOLLOW and O_NONBLOCK, and fstat must show the
  file the walk found.
- **Size.** A file over MAX_SPEC_BYTES (1 MiB) is refused before it is parsed: fstat first,
  then at most MAX_SPEC_BYTES + 1 bytes are read, so a growing file is bounded too.
- **Depth.** Lists and maps nested deeper than MAX_DEPTH (64) levels are refused while the
  YAML is composed, before pydantic or json could overflow on them.
- **No aliases.** `*anchor` (and so `<<: *anchor`) and merge keys are refused while composing:
  an alias bomb costs milliseconds and never reaches sops.
- **JSON values only.** Mapping keys must be strings (a key that YAML reads as a number, a
  boolean, null or a date is a problem; YAML 1.1's `on`/`off`/`yes`/`no` stay the text written,
  as sops reads them); timestamps stay the text written; non-finite numbers are a problem at
  their field path; `!!binary`, `!!set`, `!!omap`, `!!pairs` and python tags are refused. So
  every document that passes can be dumped with `json.dumps(..., sort_keys=True)`.
- **Containment.** At most MAX_PROBLEMS_PER_FILE problems are listed per file; a
  RecursionError, ValueError or MemoryError while checking one file is a problem of that file.
- **Decryption of what was validated.** `load_tree` hands the validated bytes to the decryptor
  (never the path again): by default `secrets.native`, in-process, which hands them to the sops
  binary on stdin for whatever it cannot do exactly as sops does. Only `spec.credentials` is
  taken from its output; everything else comes from the document that was validated. The same
  bounded loader parses the decrypted output; a tree the native path decrypted is taken as is
  when this loader would read its YAML to the same credentials without a problem
  (`reads_back_as_is`), so sops's output is neither emitted nor parsed again.

**Parsing.** libyaml scans and parses (`_CSpecLoader`, about 6x faster); the composer, resolver
and constructors that enforce the rules above are the same Python code either way, and a text
libyaml refuses, or might read otherwise than PyYAML, is read by the pure-Python `SpecLoader`,
whose verdict and problem (words, line, column) are the ones reported (`_load_typed`). A document of
plain and quoted scalars, maps and lists only (a spec as written) is built straight from
libyaml's events with the same resolver and constructors (`_from_events`, about 3x faster
again); anything else in it is left to the loaders. The native decryption takes that document
instead of parsing the same bytes again (`Parsed`), when yaml.v3 types every plain scalar the
loader typed the same way (`secrets.native.same_tree`; about a sixth of reading the specs).

`Problem.__str__` passes every part through `redact.printable`, so a file name, a YAML key or
a message quoting one is always shown on exactly one line without terminal escapes.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from reconciler.errors import DecryptionError
from reconciler.redact import printable
from reconciler.secrets import sops
from reconciler.spec.cache import SpecCache, digest
from reconciler.spec.models import Credentials, Organization
from reconciler.spec.templated import (
    LOCK_NAME,
    TEMPLATE_KINDS,
    TEMPLATES_DIR,
    Templates,
    build,
    lock_from,
)
from reconciler.templates import Lock, TemplateError, dump_lock

try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _CParser = None  # type: ignore[assignment,misc]

MAX_DEPTH = 64
MAX_SPEC_BYTES = 1024 * 1024
MAX_PROBLEMS_PER_FILE = 20
SPEC_SUFFIXES = (".yaml", ".yml")
SOPS_CONFIG_NAMES = frozenset({".sops.yaml", ".sops.yml"})

_ENC = re.compile(r"^ENC\[[A-Z0-9_]+,data:.*\]$", re.DOTALL)
_PLACEHOLDER = "<encrypted>"
_FIELD_LIMIT = 300
_MESSAGE_LIMIT = 1000

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One line of `validate` output: file, field path, message (never a value).

    `str()` is always exactly one line: every part is escaped by `redact.printable`.
    """

    path: Path
    field: str
    message: str
    # where in the file (1-based), when known: the field's key, or the nearest key above it
    # that the file has (a missing field points at its parent)
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        path = printable(self.path)
        if self.line is not None:
            path += f":{self.line}:{self.column or 1}"
        message = printable(self.message, _MESSAGE_LIMIT)
        if self.field:
            return f"{path}: {printable(self.field, _FIELD_LIMIT)}: {message}"
        return f"{path}: {message}"


@dataclass(frozen=True)
class SpecFile:
    path: Path
    org: Organization
    digest: str = ""  # sha256 of the file's bytes as read: what the spec was made from


@dataclass
class LoadResult:
    specs: list[SpecFile]
    problems: list[Problem]
    # the org id that a file which failed still names (`metadata.id`, when it parsed): such an
    # org is failing, never "gone"
    failed_ids: dict[Path, str] = field(default_factory=dict)
    # the tree's templates (`templates/`), with the lock as `validate` would write it
    templates: Templates = field(default_factory=Templates)
    lock_path: Path | None = None
    # every spec that loaded, when `specs` is a selection of them (`--org`): a template
    # rollout's waves are drawn over all the orgs that use it
    fleet: list[SpecFile] | None = None

    @property
    def all_specs(self) -> list[SpecFile]:
        return self.fleet if self.fleet is not None else self.specs

    @property
    def bad_paths(self) -> set[Path]:
        return {p.path for p in self.problems}

    @property
    def failed_files(self) -> list[Path]:
        """The files with at least one problem, each once, sorted: for the summary line."""
        return sorted(self.bad_paths)


# -- discovery ---------------------------------------------------------------------------------


def is_spec_name(name: str) -> bool:
    """`*.yaml` / `*.yml` in any case, except SOPS's own configuration file."""
    lower = name.lower()
    return lower.endswith(SPEC_SUFFIXES) and lower not in SOPS_CONFIG_NAMES


@dataclass(frozen=True)
class _Found:
    """A spec file found by the walk: shown as `path` (under the root as given), read at
    `real` (symlinks resolved), and expected to be the file `ident` (st_dev, st_ino)."""

    path: Path
    real: Path
    ident: tuple[int, int]


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, RuntimeError):  # pathlib's "Symlink loop from ..." (Python < 3.13)
        return "symlink loop"
    return type(exc).__name__


def _broken_link(exc: OSError | RuntimeError) -> str:
    # pathlib raises RuntimeError("Symlink loop from ...") before Python 3.13, then ELOOP
    if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP:
        return "symlink loop: refused"
    return f"broken symlink ({_os_reason(exc)}): refused"


def _walk(root: Path) -> tuple[list[_Found], list[Problem]]:
    """Spec files under `root` (or `root` itself if it is a file), and the entries refused."""
    try:
        real_root = root.resolve(strict=True)
        root_stat = os.stat(real_root)
    except FileNotFoundError:
        return [], []
    except (OSError, RuntimeError) as exc:
        return [], [Problem(root, "", f"cannot read: {_os_reason(exc)}")]
    if stat.S_ISREG(root_stat.st_mode):
        return [_Found(root, real_root, _ident(root_stat))], []
    if not stat.S_ISDIR(root_stat.st_mode):
        return [], [Problem(root, "", "not a regular file or a directory: refused")]

    found: list[_Found] = []
    problems: list[Problem] = []
    walked = {_ident(root_stat)}
    stack: list[tuple[Path, Path]] = [(root, real_root)]
    while stack:
        shown_dir, real_dir = stack.pop()
        try:
            with os.scandir(real_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            problems.append(Problem(shown_dir, "", f"cannot read directory: {_os_reason(exc)}"))
            continue
        subdirs: list[tuple[Path, Path]] = []
        for entry in entries:
            shown = shown_dir / entry.name
            spec_name = is_spec_name(entry.name)
            try:
                lst = entry.stat(follow_symlinks=False)
            except OSError as exc:
                problems.append(Problem(shown, "", f"cannot read: {_os_reason(exc)}"))
                continue
            real = real_dir / entry.name
            st = lst
            if stat.S_ISLNK(lst.st_mode):
                # A broken link could have been a spec or a folder of specs: always reported.
                try:
                    real = real.resolve(strict=True)
                    st = os.stat(real)  # stat only: nothing is opened
                except FileNotFoundError:
                    problems.append(Problem(shown, "", "dangling symlink: refused"))
                    continue
                except (OSError, RuntimeError) as exc:
                    problems.append(Problem(shown, "", _broken_link(exc)))
                    continue
                if not real.is_relative_to(real_root):
                    if spec_name or stat.S_ISDIR(st.st_mode):
                        problems.append(
                            Problem(shown, "", "symlink to outside the specs directory: refused")
                        )
                    continue
            if stat.S_ISDIR(st.st_mode):
                if _ident(st) not in walked:  # a folder reached twice is walked once
                    walked.add(_ident(st))
                    subdirs.append((shown, real))
            elif spec_name:
                if stat.S_ISREG(st.st_mode):
                    found.append(_Found(shown, real, _ident(st)))
                else:
                    problems.append(Problem(shown, "", "not a regular file: refused"))
        stack.extend(reversed(subdirs))
    found.sort(key=lambda f: f.path)
    return found, problems


_OPEN_FLAGS = (
    os.O_RDONLY
    | os.O_NONBLOCK
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
)


def _too_large() -> str:
    return f"larger than {MAX_SPEC_BYTES // (1024 * 1024)} MiB: refused"


def _read_spec(
    shown: Path, real: Path, ident: tuple[int, int] | None
) -> tuple[bytes | None, list[Problem]]:
    """At most MAX_SPEC_BYTES of a regular file, which must be the one the walk found."""
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        return None, [Problem(shown, "", f"cannot read: {_os_reason(exc)}")]
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, [Problem(shown, "", "not a regular file: refused")]
        if ident is not None and _ident(st) != ident:
            return None, [Problem(shown, "", "the file changed while it was read: refused")]
        if st.st_size > MAX_SPEC_BYTES:
            return None, [Problem(shown, "", _too_large())]
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_SPEC_BYTES:
            chunk = os.read(fd, min(1 << 16, MAX_SPEC_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_SPEC_BYTES:
            return None, [Problem(shown, "", _too_large())]
        return b"".join(chunks), []
    except OSError as exc:
        return None, [Problem(shown, "", f"cannot read: {_os_reason(exc)}")]
    finally:
        os.close(fd)


def read_spec(shown: Path, real: Path) -> tuple[bytes | None, list[Problem]]:
    """At most MAX_SPEC_BYTES of the regular file `real` (shown as `shown` in problems)."""
    return _read_spec(shown, real, None)


# -- YAML --------------------------------------------------------------------------------------


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that a spec file may not use (shown without the "invalid YAML" prefix)."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(None, None, problem, mark)


_TAG = "tag:yaml.org,2002:"
_STR_TAG, _FLOAT_TAG = f"{_TAG}str", f"{_TAG}float"
_YAML12_EXPONENT_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+\Z")
_STRING_KEY_TAGS = frozenset({f"{_TAG}str"})
# YAML 1.1 booleans that YAML 1.2 (and so sops) reads as strings: kept as the text written
# when used as a key, e.g. the `on:` of a Vapi hook.
_YAML11_ONLY_BOOLS = frozenset({"yes", "no", "on", "off"})


class _SpecRules:
    """What makes a YAML loader a spec loader, on top of PyYAML's safe composer and
    constructors: bounded depth, no aliases, YAML 1.2 exponent floats. Shared by `SpecLoader`
    (pure Python) and `_CSpecLoader` (libyaml's scanner and parser, the same Python composer
    and constructors)."""

    _depth = 0

    def _mark(self) -> yaml.Mark | None:
        event = self.peek_event()  # type: ignore[attr-defined]
        return getattr(event, "start_mark", None)

    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: Any) -> str:
        """As PyYAML (YAML 1.1), except a plain scalar in YAML 1.2's float form with an
        exponent (`1e-06`, `1e+100`, `1.5e3`: how sops, through Go's %g, writes floats) is a
        float, as sops and Vapi mean it. PyYAML's 1.1 float needs a dot and a signed exponent,
        so it made such values strings (a temperature of 0.000001, once sops rewrote the file,
        reached Vapi as the text "1e-06"). One past a double's range stays text, as yaml.v3
        keeps it."""
        tag: str = super().resolve(kind, value, implicit)  # type: ignore[misc]
        if (
            tag == _STR_TAG
            and kind is yaml.ScalarNode
            and implicit[0]
            and value is not None
            and _YAML12_EXPONENT_FLOAT.match(value)
            and math.isfinite(float(value))
        ):
            return _FLOAT_TAG
        return tag

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):  # type: ignore[attr-defined]
            raise _Refused("YAML aliases are not allowed in spec files", self._mark())
        nested = self.check_event(  # type: ignore[attr-defined]
            yaml.SequenceStartEvent, yaml.MappingStartEvent
        )
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", self._mark())
        try:
            node: yaml.Node | None = super().compose_node(parent, index)  # type: ignore[misc]
            return node
        finally:
            if nested:
                self._depth -= 1


class SpecLoader(_SpecRules, yaml.SafeLoader):
    """The one YAML loader for spec files, before and after decryption: bounded depth, no
    aliases, no merge keys, unique string keys and JSON-compatible values only. Pure Python:
    its problems (messages, lines and columns) are the ones a file is reported with."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._depth = 0


if _CParser is not None:

    class _CSpecLoader(
        _SpecRules,
        yaml.composer.Composer,
        _CParser,
        yaml.constructor.SafeConstructor,
        yaml.resolver.Resolver,
    ):
        """`SpecLoader` with libyaml's reader, scanner and parser (about 10x faster): the
        composer (so the alias and depth checks), the resolver and the constructors are the
        same Python code, over the same events. Only for documents that load: whatever it
        refuses is parsed again by `SpecLoader`, whose problem (its words, line and column)
        is the one reported, and so is its verdict (see `_load_typed`)."""

        def __init__(self, stream: str | bytes) -> None:
            _CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            self._depth = 0

        def resolve(self, kind: type[yaml.Node], value: str | None, implicit: Any) -> str:
            # The one event the two parsers flag differently: an empty scalar tagged `!`
            # (`a: !`) is "not implicit" to libyaml, plain-implicit (so null) to PyYAML, which
            # flags every scalar tagged `!` so. No other scalar reaches here with neither flag.
            if kind is yaml.ScalarNode and not implicit[0] and not implicit[1]:
                implicit = (True, False)
            return super().resolve(kind, value, implicit)


_C_LOADER: Any = _CSpecLoader if _CParser is not None else None


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _mapping_key(node: yaml.Node) -> str:
    if node.tag == f"{_TAG}merge":
        raise _Refused("YAML merge keys (<<) are not allowed in spec files", node.start_mark)
    if isinstance(node, yaml.ScalarNode):
        value = str(node.value)
        if node.tag in _STRING_KEY_TAGS:
            return value
        if node.tag == f"{_TAG}bool" and value.lower() in _YAML11_ONLY_BOOLS:
            return value
        shown = f" {_short(value)}" if node.tag.startswith(_TAG) else ""
        problem = f"mapping keys must be strings: quote the key{shown}"
    else:
        problem = "mapping keys must be strings"
    raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


def _construct_mapping(loader: SpecLoader, node: yaml.MappingNode) -> dict[str, Any]:
    """PyYAML keeps the last of two equal keys silently; a spec must not."""
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = _mapping_key(key_node)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_short(key)}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node)
    return result


def _construct_int(loader: SpecLoader, node: yaml.ScalarNode) -> int:
    try:
        return loader.construct_yaml_int(node)
    except ValueError:  # over sys.get_int_max_str_digits()
        raise _Refused("integer too long", node.start_mark) from None
    except IndexError:  # `!!int ""`
        raise _Refused("not an integer (!!int)", node.start_mark) from None


def _construct_float(loader: SpecLoader, node: yaml.ScalarNode) -> float:
    try:
        return loader.construct_yaml_float(node)
    except (ValueError, IndexError):  # `!!float ""`, `!!float x`
        raise _Refused("not a number (!!float)", node.start_mark) from None


def _construct_bool(loader: SpecLoader, node: yaml.ScalarNode) -> bool:
    try:
        return loader.construct_yaml_bool(node)
    except KeyError:  # `!!bool ""`, `!!bool x`
        raise _Refused("not a boolean (!!bool)", node.start_mark) from None


def _construct_pairs_map(loader: SpecLoader, node: yaml.Node) -> Any:
    """`!!map` on a scalar: PyYAML fails with a ValueError, a spec says where."""
    if not isinstance(node, yaml.MappingNode):
        raise _Refused("not a mapping (!!map)", node.start_mark)
    return _construct_mapping(loader, node)


def _construct_text(loader: SpecLoader, node: yaml.ScalarNode) -> str:
    """A timestamp stays the text written: JSON has no dates."""
    return str(loader.construct_scalar(node))


def _refuse(loader: SpecLoader, node: yaml.Node) -> Any:
    kind = node.tag.removeprefix(_TAG)
    raise _Refused(f"YAML type !!{kind} is not allowed in spec files", node.start_mark)


SpecLoader.add_constructor(f"{_TAG}map", _construct_pairs_map)
SpecLoader.add_constructor(f"{_TAG}int", _construct_int)
SpecLoader.add_constructor(f"{_TAG}float", _construct_float)
SpecLoader.add_constructor(f"{_TAG}bool", _construct_bool)
SpecLoader.add_constructor(f"{_TAG}timestamp", _construct_text)
for _kind in ("binary", "set", "omap", "pairs"):
    SpecLoader.add_constructor(f"{_TAG}{_kind}", _refuse)
if _C_LOADER is not None:  # one registry: the same constructors, whichever parser read it
    _C_LOADER.yaml_constructors = SpecLoader.yaml_constructors

# Where libyaml and PyYAML's Python scanner part ways (found by differential fuzzing, see
# `tests/unit/test_spec_cloader.py`): libyaml takes a tab as a separator where PyYAML refuses it
# (`a:\tb`, `a: b\t`, `[1,\t2]`), ends a tag at a flow indicator (`[!, 1]`: PyYAML reads the
# tag `!,`), takes a comment right after a block scalar's header (`|#`), and treats a BOM past
# the start of the text and the Unicode line breaks its own way. A text with any of these is
# read by `SpecLoader` alone (spec files seldom have any: a `!` inside words is not a tag).
_ODD = "\ufeff\x85\u2028\u2029"  # BOM, NEL, line and paragraph separators
_ODD_CHARACTER = re.compile(f"[{_ODD}]")
_HEADER_COMMENT = re.compile(r"[|>][-+0-9]*#")  # a block scalar header running into a comment
# a tag with a flow indicator in it or after it
_FLOW_TAG = re.compile(r"(?:^|[\s\[\]{},])!\S*[,\[\]{}]", re.MULTILINE)
_PYTHON_ONLY = re.compile(
    "|".join((f"[\t{_ODD}]", _HEADER_COMMENT.pattern, _FLOW_TAG.pattern)), re.MULTILINE
)
"""All of the above in one pattern: what `_python_only` answers, branch by branch."""


def _python_only(text: str) -> bool:
    """Whether `_PYTHON_ONLY` matches `text`, each of its branches searched only when the
    character it cannot match without is in the text: the one search of all three branches
    tried each at every position (about 0.07 ms of a 1.7 KB spec, a third of its parse)."""
    if "\t" in text or (not text.isascii() and _ODD_CHARACTER.search(text)):
        return True
    if "#" in text and _HEADER_COMMENT.search(text):
        return True
    return "!" in text and _FLOW_TAG.search(text) is not None


Typed = list[tuple[str, Any, bool]]
"""The plain scalars `_from_events` typed, in document order: (text, value or key, whether
a key). With the document, what `secrets.native` needs to know whether yaml.v3 reads the same
bytes as the same tree (`same_tree`): every other scalar is a string to both."""


def _load_typed(text: str) -> tuple[Any, Typed | None]:
    """The document in `text` exactly as `SpecLoader` reads it, or its exception; and the
    plain scalars typed on the way (`Typed`) when `_from_events` read it.

    libyaml reads it when it can (`_CSpecLoader`: about 0.7 ms for a 3 KB spec instead of 7).
    When libyaml refuses the text, or the text has a character where the two scanners differ,
    `SpecLoader` reads it again, so its verdict and its problem (words, line, column) are the
    ones given: libyaml words its errors differently and refuses a few documents PyYAML
    reads (`%YAML 1.3`). `tests/unit/test_spec_cloader.py` holds the two to the same documents
    and verdicts over a corpus, hostile inputs included."""
    if _C_LOADER is not None and not _python_only(text):
        typed: Typed = []
        simple = _from_events(text, typed)
        if simple is not _NOT_SIMPLE:
            return simple, typed
        try:
            return yaml.load(text, Loader=_C_LOADER), None  # noqa: S506 - safe constructors
        except Exception:  # noqa: S110 - SpecLoader decides, and says why, below
            pass
    return yaml.load(text, Loader=SpecLoader), None  # noqa: S506 - a SafeLoader subclass


_NOT_SIMPLE = object()
_MAP_TAG, _SEQ_TAG = f"{_TAG}map", f"{_TAG}seq"


class _Constructor(yaml.constructor.SafeConstructor):
    """The spec loader's scalar constructors (`SpecLoader.yaml_constructors`), for
    `_from_events`: they read nothing of the loader but the node."""


_CONSTRUCTOR = _Constructor()


def _from_events(text: str, typed: Typed | None = None) -> Any:
    """The document as `_CSpecLoader` reads it, built straight from libyaml's events (about
    3x faster: no Python composer, no node objects) when it is one document of plain and
    quoted scalars, maps and lists, with no tag, anchor or alias, no directive, no key read
    as anything but a string, no duplicate key and no nesting past MAX_DEPTH; each scalar
    typed by the spec loader's resolver and built by its constructors. Anything else, an
    error included, is `_NOT_SIMPLE`: read by `_CSpecLoader` (and `SpecLoader`), which say
    what is wrong and where. The spec loader's other checks (aliases, depth, keys) are these
    conditions. `typed`: each plain scalar typed by the resolver is added to it."""
    parser = _CParser(text)
    root: list[Any] = []
    # (container, its pending key or _NOT_SIMPLE for none yet)
    stack: list[list[Any]] = [[root, _NOT_SIMPLE]]
    documents = 0
    constructors = SpecLoader.yaml_constructors
    try:
        while parser.check_event():
            event: Any = parser.get_event()
            kind = type(event)
            if kind is yaml.ScalarEvent:
                if event.tag is not None or event.anchor is not None:
                    return _NOT_SIMPLE
                text = event.value
                resolved = event.implicit[0] and not (text and text[0] not in _TYPED_FIRST)
                top = stack[-1]
                container = top[0]
                if type(container) is dict and top[1] is _NOT_SIMPLE:  # a key
                    # quoted, or no implicit type starts with its character: a string
                    tag = _plain_tag(text, key=True) if resolved else _STR_TAG
                    key = text if tag == _STR_TAG else _mapping_key(yaml.ScalarNode(tag, text))
                    if key in container:
                        return _NOT_SIMPLE
                    top[1] = key
                    if resolved and typed is not None:
                        typed.append((text, key, True))
                    continue
                tag = _plain_tag(text) if resolved else _STR_TAG
                if tag == _STR_TAG:
                    value: Any = text
                else:
                    value = constructors[tag](_CONSTRUCTOR, yaml.ScalarNode(tag, text))
                if resolved and typed is not None:
                    typed.append((text, value, False))
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                if event.tag is not None or event.anchor is not None or len(stack) > MAX_DEPTH:
                    return _NOT_SIMPLE
                value = {} if kind is yaml.MappingStartEvent else []
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                stack.pop()
                continue
            elif kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1 or event.version is not None or event.tags:
                    return _NOT_SIMPLE
                continue
            elif kind is yaml.StreamStartEvent or kind is yaml.DocumentEndEvent:
                continue
            elif kind is yaml.StreamEndEvent:
                break
            else:  # an alias
                return _NOT_SIMPLE
            top = stack[-1]
            container = top[0]
            if type(container) is list:
                container.append(value)
            elif top[1] is _NOT_SIMPLE:  # a map or a list as a key
                return _NOT_SIMPLE
            else:
                container[top[1]] = value
                top[1] = _NOT_SIMPLE
            if type(value) is dict or type(value) is list:
                stack.append([value, _NOT_SIMPLE])
    except Exception:  # an error, a key or a value the loader refuses: it says why
        return _NOT_SIMPLE
    finally:
        parser.dispose()
    return root[0] if documents == 1 and len(root) == 1 else _NOT_SIMPLE


def _yaml_problem(path: Path, text: str, exc: yaml.YAMLError) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(0, exc.position)) + 1
        message = f"invalid YAML (line {line}): character #x{exc.character:04x} is not allowed"
        return Problem(path, "", message)
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or "not valid YAML"
    if isinstance(exc, _Refused):
        return Problem(path, "", f"{problem} ({where})" if where else problem)
    if getattr(exc, "context", None) == "expected a single document in the stream":
        problem = "more than one YAML document in the file"
    prefix = f"invalid YAML ({where})" if where else "invalid YAML"
    return Problem(path, "", f"{prefix}: {problem}")


def _json_only(doc: Any) -> bool:
    """Whether every key is a string and every value one JSON carries: the walk of
    `_value_problems` without the field paths, which only a problem needs."""
    stack = [doc]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is dict:
            if not all(type(k) is str for k in node):
                return False
            stack.extend(node.values())
        elif kind is list:
            stack.extend(node)
        elif kind is float:
            if not math.isfinite(node):
                return False
        elif not (kind is str or kind is int or kind is bool or node is None):
            return False
    return True


def _value_problems(path: Path, doc: Any) -> list[Problem]:
    """Values that JSON cannot carry, by field path (the loader lets only non-finite floats
    through; the other branches are a guard)."""
    if _json_only(doc):
        return []
    problems: list[Problem] = []
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                here = f"{where}.{k}" if where else str(k)
                if not isinstance(k, str):
                    problems.append(Problem(path, here, "mapping keys must be strings"))
                stack.append((here, v))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(node))
        elif isinstance(node, float):
            if not math.isfinite(node):
                problems.append(Problem(path, where or "(document)", "not a finite number"))
        elif node is not None and not isinstance(node, str | int):
            problems.append(
                Problem(path, where or "(document)", f"unsupported value ({type(node).__name__})")
            )
    return sorted(problems, key=lambda p: p.field)


def parse_yaml(path: Path, text: str | bytes) -> tuple[dict[str, Any] | None, list[Problem]]:
    """One spec document as JSON-compatible data, or the problems (never raises)."""
    doc, problems, _ = _parse_typed(path, text)
    return doc, problems


def _parse_typed(
    path: Path, text: str | bytes
) -> tuple[dict[str, Any] | None, list[Problem], Typed | None]:
    """`parse_yaml`, and the plain scalars it typed when `_from_events` read the document."""
    if isinstance(text, bytes):
        data = text
        if len(data) > max(MAX_SPEC_BYTES, sops.MAX_OUTPUT_BYTES):
            return None, [Problem(path, "", "too large to parse: refused")], None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            return None, [Problem(path, "", f"not valid UTF-8 (line {line})")], None
    try:
        doc, typed = _load_typed(text)
    except yaml.YAMLError as exc:
        return None, [_yaml_problem(path, text, exc)], None
    except RecursionError:
        return None, [Problem(path, "", "nested too deeply: refused")], None
    if doc is None:
        problem = "empty document: expected a mapping at the top level"
        return None, [Problem(path, "", problem)], None
    if not isinstance(doc, dict):
        return None, [Problem(path, "", "expected a mapping at the top level")], None
    problems = _value_problems(path, doc)
    return (None, _locate(problems, text), None) if problems else (doc, [], typed)


class _Typer(_SpecRules, yaml.resolver.Resolver):
    """The spec loader's typing of a plain scalar, alone (no parser): `reads_back_as_is`."""


_TYPER = _Typer()
# the first characters of the plain scalars YAML 1.1 (or the exponent floats) may type; a
# resolver for any first character (None) would make every one of them
_TYPED_FIRST = frozenset(
    (k for k in SpecLoader.yaml_implicit_resolvers if k)
    if None not in SpecLoader.yaml_implicit_resolvers
    else map(chr, range(0x110000))
)


_PLAIN_TAGS: dict[str, str] = {}
_PLAIN_TAGS_KEPT = 4096
_PLAIN_TAG_CHARS = 64


def _plain_tag(text: str, *, key: bool = False) -> str:
    """The tag the spec loader's resolver gives `text` as a plain scalar (a pure function of
    the text). A mapping key's is remembered (`key`): a fleet's files share most of their
    keys (`name`, `outbound`, `firstMessage`), and each is tried against several of YAML
    1.1's patterns. Only keys: a value may be a decrypted secret (this loader also reads
    sops's output, and checks decrypted trees), which must not outlive its run in a
    process-wide table; a key is the file's own text, which sops never encrypts. Bounded in
    count and length all the same, so a hostile file cannot grow it."""
    tag = _PLAIN_TAGS.get(text) if key else None
    if tag is None:
        tag = _TYPER.resolve(yaml.ScalarNode, text, (True, False))
        if key and len(text) <= _PLAIN_TAG_CHARS and len(_PLAIN_TAGS) < _PLAIN_TAGS_KEPT:
            _PLAIN_TAGS[text] = tag
    return tag


def _reads_as_text(text: str, writes_plain: Callable[[str], bool], *, key: bool = False) -> bool:
    """Whether this loader reads `text`, as the native path emits it, back as that string
    (`key`: a mapping key, see `_plain_tag`)."""
    if text == "<<":  # the emitter hands it to the binary
        return False
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False
    if text and text[0] not in _TYPED_FIRST:
        return True
    tag = _plain_tag(text, key=key)
    return tag == _STR_TAG or not writes_plain(text)  # quoted: a string either way


_SCALARS = (int, bool, float, type(None))
NODE_BYTES = 4 * MAX_DEPTH + 16
"""What one node of a document this deep adds to its YAML at most, beyond 10 bytes a
character of its text (indentation, indicators, quotes, a line break; an escape is at most 10
bytes): `reads_back_as_is` bounds the size of the YAML it does not write."""


def reads_back_as_is(tree: dict[str, Any], writes_plain: Callable[[str], bool]) -> bool:
    """Whether `parse_yaml` of the YAML the native path emits for the decrypted `tree`
    (`secrets.native.emit_document`: a string plain exactly when `writes_plain` says so) would
    find no problem and read `spec.credentials` equal to the tree's, and whether that YAML
    is small enough for the native path: then the tree is taken as is, neither emitted nor
    parsed (`_decrypt_one`). Anything else is left to the YAML: credentials that are not all
    strings (this loader may type a number or a date otherwise than sops), a string this
    loader would read as another type, nesting past MAX_DEPTH."""
    spec = tree.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("credentials"), dict | list):
        return False
    size = 0
    stack: list[tuple[Any, int, bool]] = [(tree, 1, False)]
    while stack:
        node, depth, secret = stack.pop()
        kind = type(node)
        size += NODE_BYTES
        if kind is str:
            if not _reads_as_text(node, writes_plain):
                return False
            size += 10 * len(node)
        elif kind is dict or kind is list:
            if depth > MAX_DEPTH:
                return False
            if kind is list:
                stack.extend((v, depth + 1, secret) for v in node)
                continue
            for k, v in node.items():
                if type(k) is not str or not _reads_as_text(k, writes_plain, key=True):
                    return False
                size += NODE_BYTES + 10 * len(k)
                stack.append((v, depth + 1, secret or (node is spec and k == "credentials")))
        elif (
            secret  # a credential that is not a string
            or not isinstance(node, _SCALARS)
            or (isinstance(node, float) and not math.isfinite(node))
        ):
            return False
    return size <= sops.MAX_OUTPUT_BYTES // 4


# -- checks ------------------------------------------------------------------------------------


def _field_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pydantic_problems(path: Path, exc: ValidationError) -> list[Problem]:
    # Only loc, type and msg: pydantic's `input` may be a secret.
    problems = []
    for n, err in enumerate(exc.errors(include_url=False, include_input=False)):
        message = err["msg"]
        # only for the lines a file shows (`_capped`): 10,000 unknown keys cost no more
        if err["type"] == "extra_forbidden" and err["loc"] and n < MAX_PROBLEMS_PER_FILE:
            guess = _did_you_mean(err["loc"])
            if guess is not None:
                message += f"; did you mean {guess!r}?"
        problems.append(Problem(path, _field_path(err["loc"]) or "(document)", message))
    return problems


def _did_you_mean(loc: tuple[int | str, ...]) -> str | None:
    """The known field closest to the unknown one at `loc` (difflib), if one is close: the
    fields of the model that holds it, by their names in the file (aliases)."""
    unknown = loc[-1]
    if not isinstance(unknown, str):
        return None
    model: Any = Organization
    for part in loc[:-1]:
        field_info = _model_field(model, part)
        if field_info is None:
            return None
        model = _model_of(field_info.annotation)
        if model is None:
            return None
    names = [info.alias or name for name, info in model.model_fields.items()]
    by_lower = {name.lower(): name for name in names}
    import difflib  # only for a file with an unknown key

    close = difflib.get_close_matches(unknown.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def _model_field(model: Any, part: int | str) -> Any:
    for name, info in model.model_fields.items():
        if part in (name, info.alias):
            return info
    return None


def _model_of(annotation: Any) -> Any:
    """The pydantic model in `X`, `X | None` or `Annotated[X, ...]`, else None."""
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _key_marks(text: str | bytes) -> yaml.Node | None:
    """The YAML node tree of a file, with each node's line and column (None if it does not
    parse: its problem then already says where)."""
    try:
        return yaml.compose(text, Loader=SpecLoader)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None


_FIELD_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def _locate(problems: list[Problem], text: str | bytes) -> list[Problem]:
    """Each problem with the line and column of its field in `text`: the field's key, or
    the nearest enclosing key the file has (a missing field is pointed at by its parent)."""
    if not any(p.field and p.line is None for p in problems):
        return problems
    root = _key_marks(text)
    if root is None:
        return problems
    located = []
    for n, problem in enumerate(problems):
        # only the lines a file shows (`_capped`): each lookup scans its mappings' keys
        shown = n < MAX_PROBLEMS_PER_FILE
        mark = _mark_of(root, problem.field) if problem.field and shown else None
        if mark is not None:
            problem = replace(problem, line=mark.line + 1, column=mark.column + 1)
        located.append(problem)
    return located


def _mark_of(root: yaml.Node, field_path: str) -> yaml.Mark | None:
    """The start of the deepest key on `field_path` (`spec.assistants.inbound.name`,
    `a[0].b`) found in the tree; parts it does not have are skipped."""
    node, found = root, None
    for index, key in _FIELD_PART.findall(field_path):
        if isinstance(node, yaml.MappingNode) and key:
            hit = next((kv for kv in node.value if getattr(kv[0], "value", None) == key), None)
            if hit is not None:
                found, node = hit[0].start_mark, hit[1]
        elif isinstance(node, yaml.SequenceNode) and index and int(index) < len(node.value):
            node = node.value[int(index)]
            found = node.start_mark
    return found


def _check_encrypted(path: Path, doc: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """Every credentials leaf must be SOPS ciphertext; returns the doc with placeholders."""
    problems: list[Problem] = []
    creds = (
        (doc.get("spec") or {}).get("credentials") if isinstance(doc.get("spec"), dict) else None
    )
    if creds is None:
        return {k: v for k, v in doc.items() if k != "sops"}, problems
    if "sops" not in doc:
        problems.append(
            Problem(path, "sops", "credentials are present but the file is not SOPS-encrypted")
        )

    masked = dict(doc)
    masked.pop("sops", None)
    placeholders = _placeholders(path, creds, "spec.credentials", problems)
    masked["spec"] = {**doc["spec"], "credentials": placeholders}
    return masked, problems


def _placeholders(path: Path, node: Any, where: str, problems: list[Problem]) -> Any:
    """`node` with each ciphertext leaf a placeholder; a plaintext leaf is a problem. A
    function of its own, not a closure calling itself: that would be a reference cycle per
    file, left to the collector."""
    if isinstance(node, dict):
        return {k: _placeholders(path, v, f"{where}.{k}", problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_placeholders(path, v, f"{where}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str) and _ENC.match(node):
        return _PLACEHOLDER
    problems.append(Problem(path, where, "plaintext secret: encrypt this file with sops"))
    return _PLACEHOLDER


def credential_problems(path: Path, doc: dict[str, Any]) -> list[Problem]:
    """`validate`'s check that every value under `spec.credentials` is SOPS ciphertext (and
    that the file has SOPS metadata), alone: what the pre-commit hook refuses."""
    if not isinstance(doc.get("spec"), dict):
        return []
    return _check_encrypted(path, doc)[1]


def _template_problem(exc: TemplateError) -> Problem:
    return Problem(Path(exc.file), exc.field, f"template {exc.template}: {exc.message}")


Made = tuple[dict[str, str], dict[str, frozenset[str]]]
"""Each templated assistant's template (`name@version`) and overridden paths, by role."""


def _expanded(
    path: Path, doc: dict[str, Any], templates: Templates
) -> tuple[dict[str, Any] | None, list[Problem], Made]:
    """`doc` with its templated assistants rendered (`spec.templated`), or their problems;
    and what each templated assistant was made from (`Organization.made_from`)."""
    out, failed, uses = templates.expand(doc, str(path))
    if failed:
        return None, [_template_problem(e) for e in failed], ({}, {})
    overridden = {u.role: u.rendered.overridden for u in uses}
    return out, [], ({u.role: u.ref for u in uses}, overridden)


Parsed = dict[Path, tuple[dict[str, Any], Typed]]
"""Each file's document as parsed (before its templates) and the scalars typed on the way,
when `_from_events` read it: `secrets.native` decrypts from it instead of parsing the same
bytes again, when yaml.v3 types those scalars the same (`same_tree`)."""


def _check_bytes(
    path: Path,
    data: bytes,
    docs: dict[Path, dict[str, Any]] | None = None,
    templates: Templates | None = None,
    parsed: Parsed | None = None,
) -> tuple[Organization | None, list[Problem]]:
    doc, problems, typed = _parse_typed(path, data)
    if doc is None:
        return None, problems
    if parsed is not None and typed is not None:  # never changed: the steps below copy
        parsed[path] = (doc, typed)
    if docs is not None:  # its `metadata.id` names a failing org, whatever fails next
        docs[path] = doc
    if doc.get("kind") in TEMPLATE_KINDS:
        return None, [
            Problem(path, "kind", f"a template belongs under {TEMPLATES_DIR}/ of the specs folder")
        ]
    rendered, problems, made_from = _expanded(path, doc, templates or Templates())
    if rendered is None:
        return None, _locate(problems, data)
    if docs is not None:  # load_tree decrypts from it without parsing the same bytes again
        docs[path] = rendered
    masked, problems = _check_encrypted(path, rendered)
    try:
        org = Organization.model_validate(masked).made_from(*made_from)
    except ValidationError as exc:
        return None, _locate(problems + _pydantic_problems(path, exc), data)
    if org.metadata.slug != path.stem:
        problems.append(
            Problem(
                path,
                "metadata.slug",
                f"{org.metadata.slug!r} differs from the file name {path.stem!r}",
            )
        )
    return (org if not problems else None), _locate(problems, data)


def _capped(path: Path, problems: list[Problem]) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS_PER_FILE:
        return problems
    more = len(problems) - MAX_PROBLEMS_PER_FILE
    return [
        *problems[:MAX_PROBLEMS_PER_FILE],
        Problem(path, "", f"... and {more} more problem(s) in this file"),
    ]


def _contained(
    path: Path, check: Callable[[], tuple[T | None, list[Problem]]]
) -> tuple[T | None, list[Problem]]:
    """`check()` for one file, whose failures stay that file's problems (capped)."""
    try:
        result, problems = check()
    except RecursionError:
        return None, [Problem(path, "", "nested too deeply to check: refused")]
    except MemoryError:
        return None, [Problem(path, "", "too large to check: refused")]
    except (ValueError, OverflowError) as exc:  # the message could quote a value: not shown
        return None, [Problem(path, "", f"cannot be checked ({type(exc).__name__})")]
    return result, _capped(path, problems)


Outcome = tuple[Organization | None, list[Problem]]
Cache = SpecCache[Outcome]


def _read_and_check(
    found: _Found,
    cache: Cache | None,
    docs: dict[Path, dict[str, Any]] | None = None,
    templates: Templates | None = None,
    parsed: Parsed | None = None,
) -> tuple[tuple[Organization, bytes, str, str] | None, list[Problem]]:
    """The file's org, the bytes it was checked from, their digest and its key in `cache`
    (each made once a file: the spec is known by them from here on)."""
    data, problems = _read_spec(found.path, found.real, found.ident)
    if data is None:
        return None, problems
    data_digest = digest(data)
    # an org file's outcome depends on its bytes and on the templates it names
    key = "" if cache is None else data_digest + (templates or Templates()).cache_key(data)
    if cache is None:
        org, problems = _check_bytes(found.path, data, docs, templates, parsed)
    else:
        org, problems = cache.get_or_compute(
            found.path,
            key,
            "checked",
            lambda: _contained(
                found.path, lambda: _check_bytes(found.path, data, docs, templates, parsed)
            ),
        )
    return ((org, data, data_digest, key) if org is not None else None), list(problems)


def templates_dir(root: Path) -> Path:
    """Where the templates of the specs at `root` are: `templates/` of the folder given, or of
    the folder of the file given."""
    base = root if not root.is_file() else root.parent
    return base / TEMPLATES_DIR


def _outside(tdir: Path) -> Problem | None:
    """`templates/` that is a link to outside its specs folder: refused unopened, lock
    included, as the walk refuses any such link."""
    if not tdir.is_symlink():
        return None
    try:
        inside = tdir.resolve(strict=True).is_relative_to(tdir.parent.resolve(strict=True))
    except (OSError, RuntimeError) as exc:
        return Problem(tdir, "", _broken_link(exc))
    return None if inside else Problem(tdir, "", "symlink to outside the specs directory: refused")


def _load_templates(tdir: Path, found: list[_Found]) -> tuple[Templates, Path, list[Problem]]:
    """The templates of the files `found` under `tdir`, held to `tdir`'s lock."""
    lock_path = tdir / LOCK_NAME
    refused = _outside(tdir)
    if refused is not None:
        return Templates(), lock_path, [refused]
    lock, problems = _read_lock(lock_path)
    files: list[tuple[str, dict[str, Any]]] = []
    for spec in found:
        data, read = _read_spec(spec.path, spec.real, spec.ident)
        doc, parsed = parse_yaml(spec.path, data) if data is not None else (None, read)
        if doc is None:
            problems += parsed
        else:
            files.append((str(spec.path), doc))
    templates, failed = build(files, lock, str(lock_path))
    problems += [_template_problem(e) for e in failed]
    return templates, lock_path, problems


def _read_lock(path: Path) -> tuple[Lock | None, list[Problem]]:
    """The templates' lock (no file, or an empty one: an empty lock), or None and why: a lock
    that cannot be read or is not one trusts no template, and is never written over."""
    if not path.exists():
        return Lock(), []
    data, problems = read_spec(path, path)
    if data is None:
        return None, problems
    doc: dict[str, Any] | None = None
    if data.strip():
        doc, problems = parse_yaml(path, data)
        if doc is None:
            return None, problems
    lock, failed = lock_from(doc, str(path))
    return lock, [_template_problem(e) for e in failed]


def write_lock(path: Path, lock: Lock) -> None:
    """`validate` records new template versions: the whole lock written, then renamed into
    place (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(dump_lock(lock), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def templates_near(path: Path) -> Templates:
    """The templates an org file at `path` may use (`templates/` of its folder); a broken
    template is refused, not reported here (`validate` reports it)."""
    tdir = templates_dir(path)
    found, _ = _walk(tdir) if tdir.is_dir() and _outside(tdir) is None else ([], [])
    return _load_templates(tdir, found)[0]


def check_file(path: Path) -> tuple[Organization | None, list[Problem]]:
    """Offline checks of one file as committed (encrypted): no key needed."""

    def check() -> tuple[Organization | None, list[Problem]]:
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            return None, [Problem(path, "", f"cannot read: {_os_reason(exc)}")]
        data, problems = _read_spec(path, real, None)
        if data is None:
            return None, problems
        return _check_bytes(path, data, templates=templates_near(path))

    return _contained(path, check)


def check_bytes(path: Path, data: bytes) -> tuple[Organization | None, list[Problem]]:
    """The offline checks of `check_file` on content about to be written to `path`."""
    return _contained(path, lambda: _check_bytes(path, data, templates=templates_near(path)))


def check_decrypted(path: Path, doc: dict[str, Any]) -> list[Problem]:
    """The checks `validate` makes of the file `path`, on its decrypted document (before it is
    encrypted): the schema, and the slug equal to the file name. Never a value."""
    if "sops" in doc:
        return [Problem(path, "sops", "sops metadata in a decrypted document: remove it")]
    try:
        rendered, problems, _ = _expanded(path, doc, templates_near(path))
        if rendered is None:
            return problems
        org = Organization.model_validate(rendered)
    except ValidationError as exc:
        return _pydantic_problems(path, exc)
    except (RecursionError, ValueError, OverflowError) as exc:
        return [Problem(path, "", f"cannot be checked ({type(exc).__name__})")]
    if org.metadata.slug != path.stem:
        return [
            Problem(
                path,
                "metadata.slug",
                f"{org.metadata.slug!r} differs from the file name {path.stem!r}",
            )
        ]
    return []


def _cross_file_problems(checked: list[tuple[Path, Organization]]) -> list[Problem]:
    problems: list[Problem] = []
    for attr in ("id", "slug"):
        first: dict[str, Path] = {}
        for path, org in checked:
            value = str(getattr(org.metadata, attr))
            if value in first:  # both files are left out: neither may take the other's state
                problems.append(
                    Problem(path, f"metadata.{attr}", f"{value} is already used by {first[value]}")
                )
                problems.append(
                    Problem(first[value], f"metadata.{attr}", f"{value} is also used by {path}")
                )
            else:
                first[value] = path
    held: dict[str, tuple[Path, int]] = {}  # one org per number: both files are refused
    for path, org in checked:
        for i, number in enumerate(org.spec.phoneNumbers):
            where = f"spec.phoneNumbers[{i}]"
            if number.key in held and held[number.key][0] != path:
                other, j = held[number.key]
                problems.append(Problem(path, where, f"{number.key} is already used by {other}"))
                problems.append(
                    Problem(
                        other, f"spec.phoneNumbers[{j}]", f"{number.key} is also used by {path}"
                    )
                )
            else:
                held.setdefault(number.key, (path, i))
    return problems


def _validate(
    root: Path,
    cache: Cache | None = None,
    docs: dict[Path, dict[str, Any]] | None = None,
    parsed: Parsed | None = None,
    keys: dict[Path, str] | None = None,
) -> tuple[LoadResult, dict[Path, bytes]]:
    """The checked specs, and the exact bytes each was checked from (and, into `docs`, the
    document each was parsed to, when it was parsed; into `parsed`, see `Parsed`; into
    `keys`, each spec's key in `cache`)."""
    found, problems = _walk(root)
    if not found and not problems:
        return LoadResult([], [Problem(root, "", "no spec files found (*.yaml, *.yml)")]), {}
    tdir = templates_dir(root)
    # `is_relative_to`, on paths both made from `root` (so alike in form): 4 us a file, this
    # 0.2, asked of every file each run of `serve`
    exact, under = str(tdir), os.path.join(tdir, "")
    is_template = [(p := str(f.path)).startswith(under) or p == exact for f in found]
    in_tdir = [f for f, template in zip(found, is_template, strict=True) if template]
    if root.is_file() and tdir.is_dir() and _outside(tdir) is None:
        in_tdir, walk_problems = _walk(tdir)
        problems += walk_problems
    found = [f for f, template in zip(found, is_template, strict=True) if not template]
    templates, lock_path, template_problems = _load_templates(tdir, in_tdir)
    problems += [p for p in template_problems if p not in problems]  # a link: once
    checked: list[tuple[Path, Organization, str]] = []
    sources: dict[Path, bytes] = {}
    for spec in found:
        outcome, spec_problems = _contained(
            spec.path, partial(_read_and_check, spec, cache, docs, templates, parsed)
        )
        problems += spec_problems
        if outcome is not None:
            checked.append((spec.path, outcome[0], outcome[2]))
            sources[spec.path] = outcome[1]
            if keys is not None:
                keys[spec.path] = outcome[3]
    for problem in _cross_file_problems([(p, o) for p, o, _ in checked]):  # rare: each file
        problems += _locate([problem], sources[problem.path])  # parsed again for where
    bad = {p.path for p in problems}
    specs = [SpecFile(p, o, d) for p, o, d in checked if p not in bad]
    return LoadResult(specs, problems, templates=templates, lock_path=lock_path), sources


def validate_tree(root: Path, cache: Cache | None = None) -> LoadResult:
    """`reconciler validate`: offline, every file, cross-file uniqueness."""
    return _validate(root, cache)[0]


def validate_with_documents(root: Path) -> tuple[LoadResult, dict[Path, dict[str, Any]]]:
    """As `validate_tree`, with each valid file's document as committed (credentials still
    encrypted): what `diff --base` compares without any key."""
    parsed: dict[Path, dict[str, Any]] = {}
    checked, _ = _validate(root, docs=parsed)
    checked.failed_ids = _failed_ids(checked.problems, parsed)
    documents: dict[Path, dict[str, Any]] = {}
    for spec in checked.specs:  # as checked: templated assistants rendered
        doc = parsed.get(spec.path)
        if doc is not None:
            documents[spec.path] = doc
    return checked, documents


# -- decryption --------------------------------------------------------------------------------

Decrypt = Callable[[Path, bytes], bytes]
"""(path for messages, the validated bytes) -> the plaintext YAML; raises DecryptionError."""


def _native_keep(tree: dict[str, Any]) -> bool:
    from reconciler.secrets.native import writes_plain

    return reads_back_as_is(tree, writes_plain)


def _decrypt_one(
    path: Path,
    data: bytes,
    decrypt: Decrypt | None,
    validated: dict[str, Any] | None = None,
    templates: Templates | None = None,
    made_from: Made | None = None,
    *,
    binary: bool = True,
    checked: Organization | None = None,
    parsed: tuple[dict[str, Any], Typed] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[Organization | None, list[Problem]]:
    """`decrypt` None: `secrets.native`, whose decrypted tree is taken as is when its YAML
    would read back the same (`reads_back_as_is`), else its YAML (or the binary's) parsed;
    `binary` False: `NeedsBinary` raised where the `sops` binary would be asked. `checked`:
    the org `validated` gave with its credentials masked (`_with_credentials`). `parsed`: the
    document of `data` and its typed scalars (`Parsed`), for `secrets.native`. `env`: the
    environment sops reads (`os.environ` when None)."""
    plain: dict[str, Any] | bytes
    try:
        if decrypt is None:
            from reconciler.secrets import native

            plain = native.decrypt_document(
                path, data, env, keep=_native_keep, binary=binary, parsed=parsed
            )
        else:
            plain = decrypt(path, data)
    except DecryptionError as exc:
        return None, [Problem(path, "", str(exc).removeprefix(f"{path}: "))]
    if isinstance(plain, dict):
        decrypted = plain
    else:
        out, problems = parse_yaml(path, plain)
        if out is None:
            return None, problems
        decrypted = out
    if validated is None:  # parsed when validated, unless the check came from the cache
        doc, problems = parse_yaml(path, data)  # cannot fail: these bytes passed before
        if doc is None:
            return None, problems
        validated, problems, made_from = _expanded(path, doc, templates or Templates())
        if validated is None:
            return None, problems
    spec = decrypted.get("spec")
    creds = spec.get("credentials") if isinstance(spec, dict) else None
    if creds is None:
        return None, [Problem(path, "spec.credentials", "missing from sops's output")]
    # Only the secrets come from sops: the rest is the document that was validated (sops reads
    # YAML 1.2 and rewrites some scalars, e.g. dates).
    if checked is not None:
        org = _with_credentials(checked, validated, creds)
        if org is not None:
            return org.made_from(*(made_from or ({}, {}))), []
    doc = {k: v for k, v in validated.items() if k != "sops"}
    doc["spec"] = {**validated["spec"], "credentials": creds}
    try:
        return Organization.model_validate(doc).made_from(*(made_from or ({}, {}))), []
    except ValidationError as exc:
        return None, _pydantic_problems(path, exc)


def _with_credentials(
    checked: Organization, validated: dict[str, Any], creds: Any
) -> Organization | None:
    """`checked` (validated with its credentials masked) holding the decrypted credentials,
    validated on their own: every check of the org that reads its credentials reads only
    which are given, and the decrypted ones have the masked ones' shape. None when they do
    not, or do not validate: the whole org is validated again (and its problems located)."""
    spec = validated.get("spec")
    masked = spec.get("credentials") if isinstance(spec, dict) else None
    if _shape(creds) != _shape(masked):
        return None
    try:
        real = Credentials.model_validate(creds)
    except ValidationError:
        return None
    return checked.model_copy(
        update={"spec": checked.spec.model_copy(update={"credentials": real})}
    )


def _shape(node: Any) -> Any:
    """The keys and list lengths of a tree, its leaves left out."""
    if isinstance(node, dict):
        return {k: _shape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_shape(v) for v in node]
    return None


def load_tree(
    root: Path,
    decrypt: Decrypt | None = None,
    workers: int = 8,
    cache: Cache | None = None,
) -> LoadResult:
    """Validated and decrypted specs; files with problems are left out and reported.

    Files whose credentials do not decrypt are reported like any other broken file, so the
    other orgs still converge. sops decrypts the bytes that were validated, not the path.
    With a `cache`, a file whose bytes were seen before is neither checked nor decrypted
    again (its earlier outcome, success or failure, is reused). `decrypt` defaults to
    `secrets.native` (imported when needed: `validate` never needs it).
    """
    from concurrent.futures import ThreadPoolExecutor

    docs: dict[Path, dict[str, Any]] = {}
    parsed: Parsed = {}
    keys: dict[Path, str] = {}  # each spec's key in `cache`, made as it was checked
    checked, sources = _validate(root, cache, docs, parsed if decrypt is None else None, keys)
    needs_sops = [s for s in checked.specs if _has_credentials(s.org)]
    # the environment as it is now, for every file: `os.environ` answers each variable sops
    # looks for and does not find (a dozen a file) by raising and catching a KeyError
    env = dict(os.environ)

    def one(spec: SpecFile, binary: bool = True) -> tuple[Organization | None, list[Problem]]:
        data = sources[spec.path]

        def run() -> Outcome:
            return _contained(
                spec.path,
                lambda: _decrypt_one(
                    spec.path,
                    data,
                    decrypt,
                    docs.get(spec.path),
                    checked.templates,
                    (spec.org.templates, spec.org.overridden),
                    binary=binary,
                    checked=spec.org,
                    parsed=parsed.get(spec.path),
                    env=env,
                ),
            )

        if cache is None:
            return run()
        org, problems = cache.get_or_compute(spec.path, keys[spec.path], "decrypted", run)
        return org, list(problems)

    results: dict[Path, tuple[Organization | None, list[Problem]]] = {}
    pooled = needs_sops
    if decrypt is not None and cache is not None:  # a file seen before waits for no thread
        pooled = []
        for spec in needs_sops:
            seen = cache.get(spec.path, keys[spec.path], "decrypted")
            if seen is None:
                pooled.append(spec)
            else:
                results[spec.path] = seen[0], list(seen[1])
    if decrypt is None:
        # In this thread: the native path holds the interpreter lock throughout, so threads
        # would only take turns (about a tenth more CPU). A file it cannot settle alone goes
        # to the pool, where `sops` processes run side by side.
        from reconciler.secrets.native import NeedsBinary

        pooled = []
        for spec in needs_sops:
            try:
                results[spec.path] = one(spec, binary=False)
            except NeedsBinary:
                pooled.append(spec)
    if pooled:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for spec, outcome in zip(pooled, pool.map(one, pooled), strict=True):
                results[spec.path] = outcome
    specs: list[SpecFile] = []
    problems = list(checked.problems)
    for spec in checked.specs:
        org, found = results.get(spec.path, (spec.org, []))
        problems += found
        if org is not None:
            specs.append(SpecFile(spec.path, org, spec.digest))
    failed = _failed_ids(problems, docs)
    return LoadResult(specs, problems, failed, checked.templates, checked.lock_path)


def _failed_ids(problems: list[Problem], docs: dict[Path, dict[str, Any]]) -> dict[Path, str]:
    out: dict[Path, str] = {}
    for problem in problems:
        metadata = docs.get(problem.path, {}).get("metadata")
        org_id = metadata.get("id") if isinstance(metadata, dict) else None
        if isinstance(org_id, str) and 0 < len(org_id) <= 64:
            out[problem.path] = org_id
    return out


def _has_credentials(org: Organization) -> bool:
    return bool(org.spec.credentials.model_fields_set)


def slugs_filter(loaded: LoadResult, slugs: Iterable[str]) -> LoadResult:
    """`--org`: keep only the named orgs; an unknown slug is a problem."""
    wanted = set(slugs)
    if not wanted:
        return loaded
    known = {s.org.metadata.slug for s in loaded.specs} | {p.path.stem for p in loaded.problems}
    problems = [p for p in loaded.problems if p.path.stem in wanted]
    problems += [Problem(Path(s), "", "no spec with this slug") for s in sorted(wanted - known)]
    return LoadResult(
        [s for s in loaded.specs if s.org.metadata.slug in wanted],
        problems,
        {p: i for p, i in loaded.failed_ids.items() if p.stem in wanted},
        loaded.templates,
        loaded.lock_path,
        loaded.all_specs,
    )
