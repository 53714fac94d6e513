"""`reconciler set FILE PATH (--from-env VAR | --stdin)`: change one value of an encrypted spec,
for scripts (e.g. rotating `spec.credentials.vapi.webhookSecret`).

PATH is the field path `validate` prints: dotted keys, list items as `[N]`
(`spec.assistants.inbound.model.messages[0].content`). Missing keys are created (a new
credential), list items are not. The value is a string (`--json`: a JSON value), never printed;
`--stdin` drops one trailing newline. The file is decrypted in memory, changed, checked as
`validate` checks it and re-encrypted in place by the `.sops.yaml` nearest to it; the rest of
the file (comments included) is kept as sops printed it. The same value again leaves the file
untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError

MAX_VALUE_BYTES = 64 * 1024
_PATH = re.compile(r"[^.\[\]]+(?:\.[^.\[\]]+|\[\d+\])*")
_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


class SetRefused(ReconcilerError):
    """The value was not set; the file is as it was."""


def parse_path(text: str) -> list[str | int]:
    """`a.b[0].c` as ["a", "b", 0, "c"]; refused when it is not such a path."""
    if not _PATH.fullmatch(text):
        from reconciler.redact import printable

        raise SetRefused(
            f"PATH {printable(text, 200)!r}: expected dotted keys and [N] list items, "
            "e.g. spec.credentials.vapi.webhookSecret"
        )
    return [key if key else int(index) for key, index in _SEGMENT.findall(text)]


def read_value(args: argparse.Namespace) -> Any:
    from reconciler.redact import printable

    if args.from_env is not None:
        raw = os.environ.get(args.from_env)
        where = f"environment variable {printable(args.from_env, 80)}"
        if raw is None:
            raise SetRefused(f"{where} is not set")
    elif sys.stdin is None:
        raise SetRefused("--stdin: there is no stdin")
    elif sys.stdin.isatty():  # a person at a terminal: a prompt that does not echo
        import getpass

        where = "the value typed"
        try:
            shown = printable(args.path, 200)
            raw = getpass.getpass(f"value for {shown} (not shown): ", stream=sys.stderr)
        except EOFError:
            raw = ""
    else:
        data = sys.stdin.buffer.read(MAX_VALUE_BYTES + 1)
        where = "stdin"
        if len(data) > MAX_VALUE_BYTES:
            raise SetRefused(f"stdin: more than {MAX_VALUE_BYTES} bytes")
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SetRefused("stdin: not UTF-8") from None
        raw = raw.removesuffix("\n").removesuffix("\r")
    if not raw.strip():
        raise SetRefused(f"{where} is empty")
    if not args.json:
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        raise SetRefused(f"{where}: not JSON (--json)") from None


def set_in(tree: dict[str, Any], parts: list[str | int], value: Any, shown: str) -> None:
    """Sets `value` at `parts` in `tree`, making missing mappings; a list item must exist."""
    node: Any = tree
    shown = f"{shown}: {_format(parts)}"
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = _format(parts[: i + 1])
        if isinstance(part, int):
            if not isinstance(node, list):
                raise SetRefused(f"{shown}: {where}: not a list")
            if part >= len(node):
                raise SetRefused(f"{shown}: {where}: the list has {len(node)} item(s)")
            if last:
                node[part] = value
            else:
                node = node[part]
            continue
        if not isinstance(node, dict):
            raise SetRefused(
                f"{shown}: {where}: {_format(parts[:i]) or 'the document'} is not a mapping"
            )
        if last:
            node[part] = value
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


def _format(parts: list[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def splice(text: str, parts: list[str | int], value: Any) -> str | None:
    """`text` with the scalar at `parts` replaced in place (everything else, comments
    included, as it was), or None when there is no such scalar to replace."""
    import yaml

    try:
        node: Any = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    for part in parts:
        if isinstance(part, int) and isinstance(node, yaml.SequenceNode):
            if part >= len(node.value):
                return None
            node = node.value[part]
        elif isinstance(part, str) and isinstance(node, yaml.MappingNode):
            found = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part]
            if len(found) != 1:
                return None
            node = found[0]
        else:
            return None
    if not isinstance(node, yaml.ScalarNode) or node.style in ("|", ">"):
        return None
    start, end = node.start_mark.index, node.end_mark.index
    return text[:start] + json.dumps(value, ensure_ascii=False) + text[end:]


def cmd_set(args: argparse.Namespace) -> int:
    import copy

    from reconciler.redact import printable
    from reconciler.spec import loader, writer

    path = Path(args.file)
    shown = printable(path)
    parts = parse_path(str(args.path))
    field = _format(parts)
    value = read_value(args)
    original, _ = writer.read_encrypted(path)
    plain = writer.decrypt_text(path, original)
    before, parse_problems = loader.parse_yaml(path, plain)
    if before is None:
        raise SetRefused(f"{shown}: sops's output does not parse: {parse_problems[0].message}")
    after = copy.deepcopy(before)
    set_in(after, parts, value, shown)
    if after == before:
        print(f"{shown}: {field} already has this value (the file is untouched)")
        return 0
    spliced = splice(plain.decode("utf-8"), parts, value)
    text = spliced.encode("utf-8") if spliced is not None else b""
    if spliced is None or loader.parse_yaml(path, text)[0] != after:
        text = writer.dump(after)  # a new key, or a scalar that could not be replaced in place
    doc, problems = writer.parse_plaintext(path, text)
    if doc is None or problems:
        raise SetRefused(f"{shown}: {field}: the spec would not be valid: {'; '.join(problems)}")
    writer.replace_checked(path, original, text, doc)
    print(f"{shown}: {field} set (re-encrypted)")
    return 0
