"""Vendor the part of Vapi's OpenAPI document that the tests read into the repository.

Usage:
    python scripts/vendor_openapi.py vapi-openapi.json [out.json]

Writes (default) tests/fixtures/vapi-openapi-assistant.json: the `Assistant` schema (what Vapi
answers for an assistant) and every component schema it reaches through `$ref`, so that
tests/integration/test_emulator_sdk.py checks the emulator's answers against Vapi's own schema
on any clone, with no file from outside the repository.

Also writes (with no `out.json` given) reconciler/vapi/openapi_kinds.json: for the phone-number
and tool routes (`KIND_ROUTES`), each operation's request and answer schema (under `paths`, as
OpenAPI has them: `requestBody` and `responses`, with the `discriminator` that picks a member)
and every component schema they reach. The emulator validates phone-number and tool bodies
against it with a JSON Schema validator (`emulator_schema.py`), so it ships in the package. The
handoff tool is left out (`EXCLUDED`): its DTOs embed a whole CreateAssistantDTO, which would make
the file ten times larger; the emulator answers 400 for `type: "handoff"`.

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
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "fixtures" / "vapi-openapi-assistant.json"
KINDS_OUT = REPO / "reconciler" / "vapi" / "openapi_kinds.json"
KIND_ROUTES = (
    ("/phone-number", "post"),
    ("/phone-number", "get"),
    ("/v2/phone-number", "get"),
    ("/phone-number/{id}", "get"),
    ("/phone-number/{id}", "patch"),
    ("/phone-number/{id}", "delete"),
    ("/tool", "post"),
    ("/tool", "get"),
    ("/tool/{id}", "get"),
    ("/tool/{id}", "patch"),
    ("/tool/{id}", "delete"),
)
EXCLUDED = frozenset({"CreateHandoffToolDTO", "UpdateHandoffToolDTO", "HandoffTool"})
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


def without_excluded(node: Json) -> Json:
    """`node` with every `oneOf` member and discriminator mapping that refers to an `EXCLUDED`
    schema dropped, recursively."""
    excluded = {REF_PREFIX + name for name in EXCLUDED}
    if isinstance(node, list):
        kept = [n for n in node if not (isinstance(n, dict) and n.get("$ref") in excluded)]
        return [without_excluded(n) for n in kept]
    if not isinstance(node, dict):
        return node
    out = {k: without_excluded(v) for k, v in node.items()}
    if isinstance(out.get("mapping"), dict):
        out["mapping"] = {k: v for k, v in out["mapping"].items() if v not in excluded}
    return out


def kind_paths(openapi: Json) -> dict[str, dict[str, Json]]:
    """The request and answer schemas of `KIND_ROUTES`, as `paths` has them (prose dropped)."""
    paths: dict[str, dict[str, Json]] = {}
    for path, method in KIND_ROUTES:
        operation = openapi["paths"][path][method]
        kept: dict[str, Json] = {}
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None:
            schema = strip(body["schema"])
            kept["requestBody"] = {"content": {"application/json": {"schema": schema}}}
        kept["responses"] = {
            status: {"content": {"application/json": {"schema": strip(answer["schema"])}}}
            for status, response in operation.get("responses", {}).items()
            if (answer := response.get("content", {}).get("application/json")) is not None
        }
        paths.setdefault(path, {})[method] = without_excluded(kept)
    return paths


def render(openapi: Json, source: bytes, kinds: bool = False) -> str:
    """The vendored document as JSON text, one schema per line: the `Assistant` closure, or
    (`kinds`) the phone-number and tool operations and their closure."""
    schemas = openapi["components"]["schemas"]
    paths = kind_paths(openapi) if kinds else None
    roots = tuple(sorted(refs(paths))) if paths is not None else ROOTS
    names = closure(schemas, roots)
    vendored: dict[str, Json] = {
        "by": "scripts/vendor_openapi.py",
        "roots": list(roots),
        "schemas": len(names),
        "dropped": sorted(DROPPED),
        "source_sha256": hashlib.sha256(source).hexdigest(),
    }
    if kinds:
        vendored["excluded"] = sorted(EXCLUDED)
    head = {
        "openapi": openapi.get("openapi"),
        "info": {k: openapi.get("info", {}).get(k) for k in ("title", "version")},
        "x-vendored": vendored,
    }
    if paths is not None:
        head["paths"] = paths
    lines = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}," for k, v in head.items()]
    trim = without_excluded if kinds else (lambda schema: schema)
    body = ",\n".join(
        f"    {json.dumps(n)}: {json.dumps(trim(strip(schemas[n])), sort_keys=True)}" for n in names
    )
    text = "{\n" + "\n".join(lines) + '\n  "components": {"schemas": {\n' + body + "\n  }}\n}\n"
    json.loads(text)  # well-formed, whatever the schemas hold
    return text


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(argv[1]).read_bytes()
    openapi = json.loads(source)
    targets = [(Path(argv[2]) if len(argv) == 3 else DEFAULT_OUT, False)]
    if len(argv) == 2:
        targets.append((KINDS_OUT, True))
    for out, kinds in targets:
        text = render(openapi, source, kinds)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        count = len(json.loads(text)["components"]["schemas"])
        print(f"wrote {out} ({out.stat().st_size} bytes, {count} schemas)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
