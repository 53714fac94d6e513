"""The templates of a specs tree, and org documents with their templated assistants rendered.

Template files are the YAML files under `templates/` of the specs folder (`TEMPLATES_DIR`),
each one `kind: AssistantTemplate` or `kind: ToolTemplate`; their version lock is
`templates/templates.lock` there. An org's assistant (or tool) that says
`template: NAME@VERSION` is replaced, before the org is checked, by what that template
renders with the org's `with` and `overrides` (`reconciler.templates.render`): the rest of the
product (planner, state, Vapi) sees an ordinary assistant (or tool). A template that fails its
checks or its lock is refused, and so is every org that uses it (its file's problem), so no
org is planned from a template that is wrong.

Pure: the loader reads the files (bounded, as every spec file) and hands this module their
parsed documents.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.templates import (
    LOCK_PATH,
    Lock,
    Rendered,
    Template,
    TemplateError,
    check_lock,
    digest,
    load_template,
    parse_use,
    read_lock,
    render,
)

TEMPLATES_DIR = "templates"
LOCK_NAME = LOCK_PATH.rsplit("/", 1)[-1]
TEMPLATE_KINDS = frozenset({"AssistantTemplate", "ToolTemplate"})
# every `template: name@version` in an org file's bytes (a prompt that quotes one only adds to
# the cache key): what a cached outcome of that file depends on besides its own bytes
_REF_IN_BYTES = re.compile(rb"""template["']?\s*:\s*["']?([a-z0-9][a-z0-9-]{0,62}@[0-9]{1,9})""")


@dataclass(frozen=True)
class Use:
    """An org's assistant made from a template, as the plan and `render` name it."""

    role: str
    ref: str  # name@version
    rendered: Rendered


@dataclass(frozen=True)
class Templates:
    """The tree's templates by `name@version`: those that passed every check, and why the
    others are refused (their own file's problem, or the lock)."""

    usable: Mapping[str, Template] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)  # ref -> the file refused
    lock: Lock = field(default_factory=Lock)  # with every version seen for the first time
    lock_changed: bool = False  # `validate` writes `lock` when set
    digests: Mapping[str, str] = field(default_factory=dict)  # ref -> content digest
    recorded: Lock = field(default_factory=Lock)  # the lock as read

    def cache_key(self, data: bytes) -> str:
        """What an org file's checked outcome depends on besides its bytes: the content of
        each template it names (so a template change invalidates exactly its users)."""
        refs = sorted({m.decode() for m in _REF_IN_BYTES.findall(data)})
        if not refs:
            return ""
        parts = [f"{r}={self.digests.get(r, 'absent')}" for r in refs]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def expand(
        self, doc: dict[str, Any], org_file: str
    ) -> tuple[dict[str, Any], list[TemplateError], tuple[Use, ...]]:
        """`doc` with each templated assistant and tool rendered; the problems (one per one
        that could not be) and the assistants' uses. The document is not modified."""
        spec = doc.get("spec")
        if not isinstance(spec, dict):
            return doc, [], ()
        problems: list[TemplateError] = []
        uses: list[Use] = []
        out = dict(spec)
        changed = False
        for section, made in (("assistants", "assistant"), ("tools", "tool")):
            entries = spec.get(section)
            if not isinstance(entries, dict) or not any(
                isinstance(e, dict) and "template" in e for e in entries.values()
            ):
                continue
            rendered_entries = dict(entries)
            for name, body in entries.items():
                if not (isinstance(body, dict) and "template" in body):
                    continue
                where = f"spec.{section}.{name}"
                try:
                    use = parse_use(body, org_file=org_file, field=where)
                    template = self.usable.get(use.template)
                    if template is None:
                        problems.append(self._missing(use.template, org_file, where))
                        continue
                    if template.of != made:
                        problems.append(
                            TemplateError(
                                org_file,
                                f"{where}.template",
                                use.template,
                                f"{template.ref} makes {template.of}s, not {made}s",
                            )
                        )
                        continue
                    rendered = render(template, use, org_file=org_file, field=where)
                except TemplateError as exc:
                    problems.append(exc)
                    continue
                rendered_entries[name] = rendered.assistant
                changed = True
                if made == "assistant":
                    uses.append(Use(str(name), use.template, rendered))
            out[section] = rendered_entries
        return ({**doc, "spec": out} if changed else doc), problems, tuple(uses)

    def _missing(self, ref: str, org_file: str, where: str) -> TemplateError:
        if ref in self.refused:
            why = f"refused: see {self.refused[ref]}"
        else:
            name = ref.rsplit("@", 1)[0]
            versions = sorted(
                (r for r in self.usable if r.rsplit("@", 1)[0] == name),
                key=lambda r: int(r.rsplit("@", 1)[1]),
            )
            have = f"versions here: {', '.join(versions)}" if versions else "no such template"
            why = f"not found under {TEMPLATES_DIR}/ ({have})"
        return TemplateError(org_file, f"{where}.template", ref, why)


def build(
    files: Iterable[tuple[str, dict[str, Any]]], lock: Lock | None, lock_source: str
) -> tuple[Templates, list[TemplateError]]:
    """The templates of the parsed template files (source, document), checked and held to
    `lock`; the problems, each naming its file. `lock` None: the lock file could not be read,
    so no template can be trusted (each is refused, naming the lock) and nothing is written
    over it."""
    if lock is None:
        unchecked = {ref: lock_source for _, doc in files if (ref := _ref_of(doc)) is not None}
        return Templates(refused=unchecked), []
    problems: list[TemplateError] = []
    loaded: list[Template] = []
    refused: dict[str, str] = {}
    for source, doc in files:
        try:
            loaded.append(load_template(doc, source))
        except TemplateError as exc:
            problems.append(exc)
            ref = _ref_of(doc)
            if ref is not None:
                refused[ref] = source
    updated, lock_problems = check_lock(loaded, lock)
    problems += lock_problems
    bad = {(p.file, p.template) for p in lock_problems}
    usable: dict[str, Template] = {}
    for template in loaded:
        if (template.source, template.ref) in bad:
            refused.setdefault(template.ref, template.source)
        elif template.ref not in usable:
            usable[template.ref] = template
    digests = {t.ref: digest(t.model) for t in loaded}
    changed = dict(updated.digests) != dict(lock.digests)
    return Templates(usable, refused, updated, changed, digests, lock), problems


def lock_from(data: object, source: str) -> tuple[Lock | None, list[TemplateError]]:
    """The lock file's parsed YAML (None: no lock yet) checked, or None and its problem."""
    try:
        return read_lock(data, source), []
    except TemplateError as exc:
        return None, [exc]


def _ref_of(doc: object) -> str | None:
    metadata = doc.get("metadata") if isinstance(doc, dict) else None
    if not isinstance(metadata, dict):
        return None
    name, version = metadata.get("name"), metadata.get("version")
    if isinstance(name, str) and isinstance(version, int) and not isinstance(version, bool):
        return f"{name}@{version}"
    return None
