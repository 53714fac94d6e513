"""YAML in and out as sops 3.11 (yaml.v3) reads and writes it: plain scalars typed as yaml.v3
types them, emitted plain exactly when yaml.v3 would; and Go's float formatting."""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import yaml

from reconciler.secrets.native._base import MAX_DEPTH, Fallback

log = logging.getLogger(__name__)

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


def same_tree(doc: dict[str, Any], typed: Sequence[tuple[str, Any, bool]]) -> dict[str, Any] | None:
    """The tree `parse_document` builds, from a reading of the same bytes that it does not
    have to repeat: `doc`, read from libyaml's events with no tag, anchor, alias, directive,
    duplicate key or second document, nested no deeper than MAX_DEPTH, in which every scalar
    is a string but the plain ones in `typed` (text, the value or key it was read as, whether
    a key), in document order. When yaml.v3 types each of those as `doc` holds it (same type,
    same value; a key a string), `doc` is that tree: its top level is copied (the caller takes
    `sops` out of it), the rest shared, read only. None when one differs, or is not sure.
    The reader's depth bound must be this module's MAX_DEPTH (the spec loader's is: a test
    holds them equal)."""
    for text, value, is_key in typed:
        try:
            kind, v3 = resolve_plain(text)
        except Unsure:
            return None
        if is_key:
            if kind != "str" or v3 != value:
                return None
        elif kind == "uint" or type(v3) is not type(value) or v3 != value:
            return None
        elif kind == "float" and math.copysign(1.0, v3) != math.copysign(1.0, value):
            return None  # -0.0 == 0.0, yet the MAC would write them apart
    return dict(doc)


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
