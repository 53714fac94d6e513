"""Vendor the part of Vapi's OpenAPI document that the tests read into the repository.

Usage:
    python scripts/vendor_openapi.py vapi-openapi.json [out.json]

Writes (default) tests/fixtures/vapi-openapi-assistant.json: the `Assistant` schema (what Vapi
answers for an assistant) and every component schema it reaches through `$ref`, so that
tests/integration/test_emulator_sdk.py checks the emulator's answers against Vapi's own schema
on any clone, with no file from outside the repository.

The output is itself an OpenAPI document (`openapi`, `info`, `components.schemas`): every `$ref`
("#/components/schemas/X") resolves inside it. The prose annotations `description`, `example`
and `examples` are dropped from schemas (most of the size; no test reads them); every other
keyword is kept as Vapi wrote it. `x-vendored` records the source's version and sha256. One
schema per line, sorted by name, so that a regenerated file diffs by schema.

The emulator's own validation schema, reconciler/vapi/assistant_schema.json, comes from the same
document by scripts/extract_assistant_schema.py (the request DTOs, simplified); this script
leaves it alone.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOTS = ("Assistant",)
REF_PREFIX = "#/components/schemas/"
DROPPED = frozenset({"description", "example", "examples"})
DEFAULT_OUT = (
    Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "vapi-openapi-assistant.json"
)
# Keywords whose value is a map of names to schemas, a schema, or a list of schemas.
SCHEMA_MAPS = ("properties", "patternProperties")
SCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames")
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")

Json = Any


def strip(schema: Json) -> Json:
    """`schema` without its prose annotations, recursively through its sub-schemas only (a
    property named `description`, or a default value holding one, is kept)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Json] = {}
    for key, value in schema.items():
        if key in DROPPED:
            continue
        if key in SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: strip(sub) for name, sub in value.items()}
        elif key in SCHEMA_ONE and isinstance(value, dict):
            out[key] = strip(value)
        elif key in SCHEMA_LISTS and isinstance(value, list):
            out[key] = [strip(sub) for sub in value]
        else:
            out[key] = value
    return out


def refs(node: Json) -> set[str]:
    """The component names `node` refers to: `$ref`s and discriminator mappings, anywhere."""
    found: set[str] = set()

    def walk(node: Json) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str):
                    found.add(value)
                elif key == "mapping" and isinstance(value, dict):
                    found.update(v for v in value.values() if isinstance(v, str))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(node)
    return {r.removeprefix(REF_PREFIX) for r in found if r.startswith(REF_PREFIX)}


def closure(schemas: dict[str, Json], roots: tuple[str, ...]) -> list[str]:
    """`roots` and every schema they reach, sorted; a `$ref` to a missing schema is an error."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in schemas:
            raise SystemExit(f"error: #/components/schemas/{name} is referred to but missing")
        seen.add(name)
        todo.extend(refs(schemas[name]) - seen)
    return sorted(seen)


def render(openapi: Json, source: bytes) -> str:
    """The vendored document as JSON text, one schema per line."""
    schemas = openapi["components"]["schemas"]
    names = closure(schemas, ROOTS)
    head = {
        "openapi": openapi.get("openapi"),
        "info": {k: openapi.get("info", {}).get(k) for k in ("title", "version")},
        "x-vendored": {
            "by": "scripts/vendor_openapi.py",
            "roots": list(ROOTS),
            "schemas": len(names),
            "dropped": sorted(DROPPED),
            "source_sha256": hashlib.sha256(source).hexdigest(),
        },
    }
    lines = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}," for k, v in head.items()]
    body = ",\n".join(
        f"    {json.dumps(n)}: {json.dumps(strip(schemas[n]), sort_keys=True)}" for n in names
    )
    text = "{\n" + "\n".join(lines) + '\n  "components": {"schemas": {\n' + body + "\n  }}\n}\n"
    json.loads(text)  # well-formed, whatever the schemas hold
    return text


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(argv[1]).read_bytes()
    out = Path(argv[2]) if len(argv) == 3 else DEFAULT_OUT
    text = render(json.loads(source), source)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    count = len(json.loads(text)["components"]["schemas"])
    print(f"wrote {out} ({out.stat().st_size} bytes, {count} schemas)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
