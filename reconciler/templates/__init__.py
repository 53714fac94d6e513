"""Assistant templates, the pure core: one assistant design for many orgs.

A `kind: AssistantTemplate` file has typed parameters and an assistant body (a `kind:
ToolTemplate` file, a tool body); an org's assistant (or tool) says `template: NAME@VERSION`,
`with:` and `overrides:`. This package checks
templates, renders an org's assistant (substitution, then the closed merge rules of
`LIST_RULES`, then the assistant spec's own check) with the origin of every value, and pins
each version's content in a lock. Pure: no I/O, network, database or clock; the callers
(loader, CLI, planner) read the files. See docs/templates.md.
"""

from reconciler.templates._lock import (
    LOCK_PATH,
    Lock,
    canonical_json,
    check_lock,
    digest,
    dump_lock,
    parse_lock,
    read_lock,
)
from reconciler.templates._merge import LIST_RULES, ListRule, format_path
from reconciler.templates._model import (
    AssistantTemplate,
    Origin,
    Parameter,
    Rollout,
    TemplateError,
    TemplateUse,
    ToolTemplate,
    Wave,
    parse_ref,
    parse_use,
)
from reconciler.templates._render import Rendered, Template, load_template, render

__all__ = [
    "LIST_RULES",
    "LOCK_PATH",
    "AssistantTemplate",
    "ListRule",
    "Lock",
    "Origin",
    "Parameter",
    "Rendered",
    "Rollout",
    "Template",
    "TemplateError",
    "TemplateUse",
    "ToolTemplate",
    "Wave",
    "canonical_json",
    "check_lock",
    "digest",
    "dump_lock",
    "format_path",
    "load_template",
    "parse_lock",
    "parse_ref",
    "parse_use",
    "read_lock",
    "render",
]
