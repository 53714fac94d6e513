"""Merging an org's overrides onto a rendered template body, by a closed set of rules.

Maps merge deeply, the override winning per key, and `null` removes a key (JSON Merge Patch,
RFC 7396). Lists are where Kustomize and Helm surprise their users (a list in an override
silently replaces the base's), so here every list path that may be merged has a declared
merge key in `LIST_RULES`; any other list in an override is refused unless it says
`{$patch: replace, items: [...]}`. The values carry their origin through the merge, so the
result can say for each leaf whether the template or the override set it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from reconciler.templates._model import Origin

DELETE = "$delete"
PATCH = "$patch"
ITEMS = "items"
VALUE = "value"


@dataclass(frozen=True)
class ListRule:
    """How one list path merges. `keys` are dotted paths inside an item, tried in order (the
    first an item has is its identity); no keys: a set of plain values."""

    path: str
    keys: tuple[str, ...]
    why: str

    @property
    def merge_key(self) -> str:
        return ", else ".join(self.keys) if self.keys else "(set of values)"


# The one table: every list path of the assistant spec that an override may merge into.
# `[]` stands for "inside any item of that list". docs/templates.md lists exactly these
# (a test checks).
LIST_RULES: dict[str, ListRule] = {
    rule.path: rule
    for rule in (
        ListRule("model.messages", ("role",), "one prompt message per role"),
        ListRule(
            "model.tools",
            ("function.name", "type"),
            "a function tool by its name; other tool types are one per type, as in spec.tools",
        ),
        ListRule("model.toolIds", (), "Vapi tool ids"),
        ListRule("tools", (), "names of the org's spec.tools"),
        ListRule("clientMessages", (), "message types sent to the client"),
        ListRule("serverMessages", (), "message types sent to the server URL"),
        ListRule("endCallPhrases", (), "phrases that end the call"),
        ListRule("credentialIds", (), "Vapi credential ids"),
        ListRule("transcriber.keywords", (), "words the transcriber boosts"),
        ListRule("transcriber.keyterm", (), "terms the transcriber boosts"),
        ListRule(
            "function.parameters.required", (), "a function tool's required arguments (tools)"
        ),
    )
}


@dataclass(frozen=True)
class Leaf:
    """A scalar of the merged tree and where it came from."""

    value: Any
    origin: Origin


Node: TypeAlias = dict[str, "Node"] | list["Node"] | Leaf
Path = tuple[str | int, ...]


class MergeError(ValueError):
    """A refused override, at `path` (a field path of the override)."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def format_path(path: Path) -> str:
    """`model.messages[0].content`; a key that is no plain name is quoted (`metadata["a.b"]`)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.replace("_", "a").replace("-", "a").replace("$", "a").isalnum() and part:
            out += f".{part}" if out else part
        else:
            out += '["' + part.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return out


def rule_path(path: Path) -> str:
    """The path as `LIST_RULES` spells it: list indices become `[]`."""
    out = ""
    for part in path:
        out += "[]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def wrap(value: Any, origin: Origin) -> Node:
    """A plain value as a tree whose every leaf has `origin`."""
    if isinstance(value, Mapping):
        return {str(k): wrap(v, origin) for k, v in value.items()}
    if isinstance(value, list):
        return [wrap(v, origin) for v in value]
    return Leaf(value, origin)


def unwrap(node: Node, path: Path = ()) -> tuple[Any, dict[str, Origin]]:
    """The plain value of a tree and the origin of each leaf by its path."""
    origins: dict[str, Origin] = {}

    def walk(n: Node, at: Path) -> Any:
        if isinstance(n, Leaf):
            origins[format_path(at)] = n.origin
            return n.value
        if isinstance(n, dict):
            return {k: walk(v, (*at, k)) for k, v in n.items()}
        return [walk(v, (*at, i)) for i, v in enumerate(n)]

    return walk(node, path), origins


def plain(node: Node) -> Any:
    return unwrap(node)[0]


def plain_and_overridden(node: Node) -> tuple[Any, frozenset[str]]:
    """The plain value of a tree and the paths of its leaves that an override set: what the
    loader needs, without a path for every leaf (`unwrap` gives them all)."""
    overridden: list[str] = []

    def walk(n: Node, at: Path) -> Any:
        if isinstance(n, Leaf):
            if n.origin.source == "override":
                overridden.append(format_path(at))
            return n.value
        if isinstance(n, dict):
            return {k: walk(v, (*at, k)) for k, v in n.items()}
        return [walk(v, (*at, i)) for i, v in enumerate(n)]

    return walk(node, ()), frozenset(overridden)


_ABSENT = object()


def merge(base: Node, override: Mapping[str, Any], origin: Origin) -> Node:
    """`override` (plain YAML data) merged onto `base`; its leaves get `origin`."""
    return _merge_map(base if isinstance(base, dict) else {}, override, (), origin)


def _merge_value(base: Any, over: Any, at: Path, origin: Origin) -> Node:
    if isinstance(over, Mapping) and PATCH in over:
        return _replace_list(over, at, origin)
    if isinstance(base, list) and not isinstance(over, list):
        raise MergeError(
            at,
            f"the template has a list here and the override a {_kind(over)}; to replace "
            f"the list whole write {{{PATCH}: replace, {ITEMS}: [...]}}",
        )
    if isinstance(over, Mapping):
        return _merge_map(base if isinstance(base, dict) else {}, over, at, origin)
    if isinstance(over, list):
        rule = LIST_RULES.get(rule_path(at))
        if rule is None:
            raise MergeError(
                at,
                f"list {rule_path(at)} has no declared merge key; to replace it whole write "
                f"{{{PATCH}: replace, {ITEMS}: [...]}}",
            )
        return _merge_list(base if isinstance(base, list) else [], over, rule, at, origin)
    return Leaf(over, origin)


def _kind(value: Any) -> str:
    return "map" if isinstance(value, Mapping) else "list" if isinstance(value, list) else "value"


def _merge_map(base: dict[str, Node], over: Mapping[str, Any], at: Path, origin: Origin) -> Node:
    out = dict(base)
    for key, value in over.items():
        if key.startswith("$"):
            raise MergeError((*at, key), f"{key} is not a directive here (only in list items)")
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_value(out.get(key, _ABSENT), value, (*at, key), origin)
    return out


def _replace_list(over: Mapping[str, Any], at: Path, origin: Origin) -> Node:
    if over.get(PATCH) != "replace" or set(over) != {PATCH, ITEMS}:
        raise MergeError(
            at, f"write {{{PATCH}: replace, {ITEMS}: [...]}} (no other {PATCH} or keys)"
        )
    items = over[ITEMS]
    if not isinstance(items, list):
        raise MergeError((*at, ITEMS), f"{ITEMS} must be a list")
    return [wrap(item, origin) for item in items]


Identity = tuple[str, str, Any]


def _identity(item: Any, rule: ListRule) -> Identity | None:
    """Which of the rule's keys an item has first, and its value (with its type: `1` and
    `true` are different items)."""
    value = item.value if isinstance(item, Leaf) else item
    if not rule.keys:
        return ("", type(value).__name__, value)
    for key in rule.keys:
        found: Any = item
        for part in key.split("."):
            if isinstance(found, Mapping) and part in found:
                found = found[part]
            else:
                break
        else:
            found = found.value if isinstance(found, Leaf) else found
            if isinstance(found, str | int | bool):
                return (key, type(found).__name__, found)
    return None


def _merge_list(
    base: list[Node], over: list[Any], rule: ListRule, at: Path, origin: Origin
) -> Node:
    out: list[Node] = list(base)
    index: dict[Identity, int] = {}
    for i, node in enumerate(base):
        ident = _identity(node, rule)
        if ident is None or ident in index:
            problem = "no merge key" if ident is None else f"the same {ident[0]} as another"
            raise MergeError(
                at,
                f"the template's {rule.path}[{i}] has {problem}; to replace the list whole "
                f"write {{{PATCH}: replace, {ITEMS}: [...]}}",
            )
        index[ident] = i
    seen: set[Identity] = set()
    deleted: set[int] = set()
    for j, item in enumerate(over):
        where = (*at, j)
        delete = isinstance(item, Mapping) and DELETE in item
        target = _delete_target(item, rule, where) if delete else item
        ident = _item_identity(target, rule, where)
        if ident in seen:
            raise MergeError(where, f"{rule.path} names {ident[2]!r} twice in the override")
        seen.add(ident)
        if delete:
            if rule.keys and _without(target, ident[0]):
                raise MergeError(where, f"a {DELETE} item gives its merge key and nothing else")
            if ident in index:
                deleted.add(index[ident])
        elif ident not in index:  # a new item: new content, taken as written
            index[ident] = len(out)
            out.append(wrap(item, origin))
        elif rule.keys:
            current = out[index[ident]]
            assert isinstance(current, dict)
            out[index[ident]] = _merge_map(current, _without(item, ident[0]), where, origin)
    return [node for i, node in enumerate(out) if i not in deleted]


def _item_identity(item: Any, rule: ListRule, where: Path) -> Identity:
    if rule.keys and not isinstance(item, Mapping):
        raise MergeError(where, f"items of {rule.path} are maps keyed by {rule.merge_key}")
    if not rule.keys and isinstance(item, Mapping | list):
        raise MergeError(
            where,
            f"items of {rule.path} are plain values (to remove one: "
            f"{{{DELETE}: true, {VALUE}: ...}})",
        )
    ident = _identity(item, rule)
    if ident is None:
        raise MergeError(where, f"an item of {rule.path} needs its merge key {rule.merge_key}")
    return ident


def _without(item: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The item without its merge key (the key is what matched, not a change): maps left
    empty by that are dropped too."""
    head, _, rest = key.partition(".")
    out = dict(item)
    if rest and isinstance(out.get(head), Mapping):
        inner = _without(out[head], rest)
        if inner:
            out[head] = inner
        else:
            del out[head]
    elif not rest:
        out.pop(head, None)
    return out


def _delete_target(item: Mapping[str, Any], rule: ListRule, where: Path) -> Any:
    """The item a `$delete: true` names: its key fields (keyed list) or `value` (set)."""
    if item[DELETE] is not True:
        raise MergeError((*where, DELETE), f"{DELETE} takes only `true`")
    rest = {k: v for k, v in item.items() if k != DELETE}
    if rule.keys:
        return rest
    if set(rest) != {VALUE}:
        raise MergeError(
            where, f"remove a value of {rule.path} with {{{DELETE}: true, {VALUE}: ...}}"
        )
    return rest[VALUE]
