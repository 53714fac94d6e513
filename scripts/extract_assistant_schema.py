"""Regenerate reconciler/vapi/assistant_schema.json from Vapi's OpenAPI document.

Usage:
    python scripts/extract_assistant_schema.py vapi-openapi.json [out.json] [--max-depth=N]

The output keeps only what the emulator's validator reads: the CreateAssistantDTO and
UpdateAssistantDTO schemas plus a `defs` map of the component schemas reachable from them, each
stripped down to the keywords `type, properties, required, items, enum, minimum, maximum,
minLength, maxLength, nullable, oneOf, $ref`. `allOf: [ref]` wrappers are unwrapped, a `oneOf`
whose object members are not told apart by a `provider` enum becomes `{}` ("anything"), and a
schema more than `--max-depth` `$ref` hops from the roots becomes `{}` too, to bound the size.
"""

from __future__ import annotations

import json
import sys
from collections import deque
from pathlib import Path
from typing import Any

ROOTS = ("CreateAssistantDTO", "UpdateAssistantDTO")
KEEP = ("type", "required", "enum", "minimum", "maximum", "minLength", "maxLength", "nullable")
REF_PREFIX = "#/components/schemas/"
DEFAULT_OUT = (
    Path(__file__).resolve().parent.parent / "reconciler" / "vapi" / "assistant_schema.json"
)

Json = Any


def ref_name(node: Json) -> str | None:
    ref = node.get("$ref") if isinstance(node, dict) else None
    return ref[len(REF_PREFIX) :] if isinstance(ref, str) and ref.startswith(REF_PREFIX) else None


def provider_values(member: Json, schemas: dict[str, Json]) -> list[Any] | None:
    """The `provider` enum of an object member of a oneOf, or None if it has none."""
    name = ref_name(member)
    target = schemas.get(name, {}) if name else member
    enum = target.get("properties", {}).get("provider", {}).get("enum")
    return enum if isinstance(enum, list) and enum else None


def is_object_member(member: Json, schemas: dict[str, Json]) -> bool:
    name = ref_name(member)
    target = schemas.get(name, {}) if name else member
    return target.get("type") == "object" or "properties" in target


def discriminated(one_of: list[Json], schemas: dict[str, Json]) -> bool:
    objects = [m for m in one_of if is_object_member(m, schemas)]
    return bool(objects) and all(provider_values(m, schemas) for m in objects)


def simplify(node: Json, schemas: dict[str, Json], refs: set[str]) -> Json:
    """Strip one schema node (recursively within the same component); collect the refs it uses."""
    if not isinstance(node, dict):
        return {}
    name = ref_name(node)
    if name is not None:
        refs.add(name)
        return {"$ref": name}
    one_of = node.get("oneOf")
    if isinstance(one_of, list):
        if not discriminated(one_of, schemas):
            return {"nullable": True} if node.get("nullable") else {}
        out: dict[str, Json] = {"oneOf": [simplify(m, schemas, refs) for m in one_of]}
        if node.get("nullable"):
            out["nullable"] = True
        return out
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:
        inner = simplify(all_of[0], schemas, refs)
        if node.get("nullable"):
            inner = {**inner, "nullable": True}
        return inner
    out = {k: node[k] for k in KEEP if k in node}
    if isinstance(node.get("properties"), dict):
        out["properties"] = {k: simplify(v, schemas, refs) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        out["items"] = simplify(node["items"], schemas, refs)
    return out


def prune(node: Json, keep: set[str]) -> Json:
    """Replace refs to schemas that were cut off by the depth limit with `{}` (anything)."""
    if isinstance(node, dict):
        if "$ref" in node and node["$ref"] not in keep:
            return {}
        return {k: prune(v, keep) for k, v in node.items()}
    if isinstance(node, list):
        return [prune(v, keep) for v in node]
    return node


def extract(openapi: Json, max_depth: int = 3) -> Json:
    schemas: dict[str, Json] = openapi["components"]["schemas"]
    defs: dict[str, Json] = {}
    depth: dict[str, int] = {}
    queue: deque[str] = deque()
    for root in ROOTS:
        depth[root] = 0
        queue.append(root)
    while queue:  # breadth first, so each schema gets its smallest depth
        name = queue.popleft()
        refs: set[str] = set()
        defs[name] = simplify(schemas[name], schemas, refs)
        for ref in sorted(refs):
            if ref not in depth and ref in schemas and depth[name] < max_depth:
                depth[ref] = depth[name] + 1
                queue.append(ref)
    defs = {k: prune(v, set(defs)) for k, v in sorted(defs.items())}
    return {
        "source": "Vapi OpenAPI components.schemas, by scripts/extract_assistant_schema.py",
        "openapiVersion": openapi.get("info", {}).get("version"),
        "maxDepth": max_depth,
        "roots": {"create": ROOTS[0], "update": ROOTS[1]},
        "defs": defs,
    }


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if not a.startswith("--max-depth")]
    max_depth = 3
    for a in argv[1:]:
        if a.startswith("--max-depth="):
            max_depth = int(a.split("=", 1)[1])
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    openapi = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    out = Path(args[1]) if len(args) > 1 else DEFAULT_OUT
    data = extract(openapi, max_depth)
    out.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(data['defs'])} schemas)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
