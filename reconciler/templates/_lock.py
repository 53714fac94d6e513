"""Version pinning: each template version's content digest, kept in a lock file in the specs
tree, so a template edited without a new `metadata.version` cannot reach orgs silently.

The digest is over the template's content, not its text: comments, key order and YAML style
do not change it; any value does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.templates._model import REF_PATTERN, AnyTemplate, TemplateError, parse_ref
from reconciler.templates._render import Template

LOCK_PATH = "templates/templates.lock"  # relative to the specs directory
LOCK_KIND = "TemplateLock"
_HEADER = (
    "# The content digest of each template version (written by `reconciler validate`).\n"
    "# A template whose content differs from its digest here is refused: give it a new\n"
    "# metadata.version. Commit this file with the templates.\n"
)


def canonical_json(value: Any) -> bytes:
    """One byte string per value: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def digest(template: AnyTemplate) -> str:
    """`sha256:<hex>` of the template's canonical JSON (as written: defaults the code adds
    later do not change an old version's digest)."""
    content = template.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return "sha256:" + hashlib.sha256(canonical_json(content)).hexdigest()


@dataclass(frozen=True)
class Lock:
    """`name@version` -> digest."""

    digests: Mapping[str, str] = field(default_factory=dict)


def parse_lock(text: str, source: str = LOCK_PATH) -> Lock:
    """A lock file's text read; an empty text is an empty lock. Raises TemplateError."""
    return read_lock(yaml.safe_load(text) if text.strip() else None, source)


def read_lock(data: object, source: str = LOCK_PATH) -> Lock:
    """A lock file's parsed YAML (None: empty) checked. Raises TemplateError."""
    if data is None:
        data = {"apiVersion": "reconciler/v1"}
    if not isinstance(data, dict) or data.get("apiVersion") != "reconciler/v1":
        raise TemplateError(source, "apiVersion", "*", "a template lock of reconciler/v1 expected")
    if data.get("kind", LOCK_KIND) != LOCK_KIND or set(data) - {"apiVersion", "kind", "templates"}:
        raise TemplateError(source, "", "*", f"only apiVersion, kind: {LOCK_KIND} and templates")
    entries = data.get("templates") or {}
    if not isinstance(entries, dict):
        raise TemplateError(source, "templates", "*", "a map of name@version to digest expected")
    for ref, value in entries.items():
        if not isinstance(ref, str) or parse_ref(ref) is None:
            raise TemplateError(source, f"templates.{ref}", str(ref), f"not {REF_PATTERN}")
        if not (isinstance(value, str) and value.startswith("sha256:") and len(value) == 71):
            raise TemplateError(source, f"templates.{ref}", ref, "not a sha256:<hex> digest")
    return Lock(dict(entries))


def dump_lock(lock: Lock) -> str:
    """The lock file's text: stable, sorted by name then version, so diffs stay small."""
    ordered = sorted(lock.digests, key=lambda r: parse_ref(r) or (r, 0))
    body = {
        "apiVersion": "reconciler/v1",
        "kind": LOCK_KIND,
        "templates": {ref: lock.digests[ref] for ref in ordered},
    }
    return _HEADER + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


def check_lock(templates: Iterable[Template], lock: Lock) -> tuple[Lock, list[TemplateError]]:
    """The lock with every version seen for the first time added, and a problem for each
    template whose content changed under a locked version (or that two files claim). Locked
    versions no file has any more stay: a rollout may still need to know them."""
    digests = dict(lock.digests)
    problems: list[TemplateError] = []
    claimed: dict[str, str] = {}
    for template in templates:
        ref, now = template.ref, digest(template.model)
        if ref in claimed:
            problems.append(
                template.error(("metadata", "version"), f"{ref} is also defined in {claimed[ref]}")
            )
            continue
        claimed[ref] = template.source
        locked = digests.setdefault(ref, now)
        if locked != now:
            problems.append(
                template.error(
                    ("metadata", "version"),
                    f"content changed since version {template.model.metadata.version} was "
                    f"locked ({locked[:19]}..., now {now[:19]}...); give it a new "
                    "metadata.version",
                )
            )
    return Lock(dict(sorted(digests.items()))), problems
