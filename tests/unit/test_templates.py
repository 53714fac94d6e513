"""Assistant templates, the pure core: the merge rules as a table (every declared list path),
substitution, every error as one line naming file, template and field, the version lock and
the origin of each rendered value. No files, database or network: templates are dicts."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.templates import (
    LIST_RULES,
    Lock,
    Origin,
    Template,
    TemplateError,
    TemplateUse,
    check_lock,
    digest,
    dump_lock,
    format_path,
    load_template,
    parse_lock,
    parse_use,
    render,
)

ROOT = Path(__file__).resolve().parents[2]
ORG_FILE = "specs/acme-dental.yaml"
TEMPLATE_FILE = "specs/templates/dental-receptionist.yaml"
FIELD = "assistants.inbound"
REF = "dental-receptionist@3"

# A template that has a value at every declared list path, so each rule meets a base list.
BASE: dict[str, Any] = {
    "apiVersion": "reconciler/v1",
    "kind": "AssistantTemplate",
    "metadata": {"name": "dental-receptionist", "version": 3},
    "parameters": {
        "practiceName": {"type": "string", "maxLength": 30},
        "voice": {"type": "enum", "values": ["burt", "sarah"], "default": "burt"},
        "seats": {"type": "integer", "default": 2},
        "recording": {"type": "boolean", "default": False},
    },
    "assistant": {
        "name": "${practiceName} Reception",
        "firstMessage": "Thanks for calling ${practiceName}. Seats: ${seats}",
        "maxDurationSeconds": 300,
        "model": {
            "provider": "openai",
            "model": "gpt-4o",
            "temperature": 0.3,
            "messages": [
                {"role": "system", "content": "You are the receptionist of ${practiceName}."},
                {"role": "assistant", "content": "Hello"},
            ],
            "tools": [
                {"type": "function", "function": {"name": "book", "description": "Book"}},
                {"type": "endCall"},
            ],
            "toolIds": ["id-1", "id-2"],
        },
        "voice": {"provider": "11labs", "voiceId": "${voice}"},
        "transcriber": {
            "provider": "deepgram",
            "keywords": ["Acme:2"],
            "keyterm": ["molar"],
        },
        "tools": ["book_appointment", "end_call"],
        "clientMessages": ["transcript"],
        "serverMessages": ["end-of-call-report", "status-update"],
        "endCallPhrases": ["goodbye"],
        "credentialIds": ["cred-1"],
        "metadata": {"recording": "${recording}", "tier": "gold"},
        "hooks": [{"on": "call.ending", "do": []}],
    },
}


def template(**body: Any) -> Template:
    data = copy.deepcopy(BASE)
    data["assistant"].update(body)
    return load_template(data, TEMPLATE_FILE)


def use(overrides: dict[str, Any] | None = None, **given: Any) -> TemplateUse:
    return TemplateUse.model_validate(
        {"template": REF, "with": {"practiceName": "Acme", **given}, "overrides": overrides or {}}
    )


def rendered(overrides: dict[str, Any] | None = None, **given: Any) -> dict[str, Any]:
    return render(template(), use(overrides, **given), org_file=ORG_FILE, field=FIELD).assistant


def at(value: Any, path: str) -> Any:
    for part in path.split("."):
        value = value[part]
    return value


def refused(overrides: dict[str, Any] | None = None, **given: Any) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        rendered(overrides, **given)
    return caught.value


def assert_one_line(error: TemplateError, file: str, field: str, *fragments: str) -> None:
    text = str(error)
    assert "\n" not in text, text
    assert text.startswith(f"{file}: {field}: template {REF}: "), text
    for fragment in fragments:
        assert fragment in text, text


# --- merge rules: one table -------------------------------------------------------------------

# (list path, override at that path, expected list). Every declared path appears (checked below).
MERGE_TABLE: list[tuple[str, str, Any, Any]] = [
    (
        "model.messages",
        "merge by role, in template order, new roles appended",
        [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be brief."}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Hi"},
        ],
    ),
    (
        "model.messages",
        "$delete removes one item",
        [{"role": "assistant", "$delete": True}],
        [{"role": "system", "content": "You are the receptionist of Acme."}],
    ),
    (
        "model.messages",
        "$patch: replace replaces the list whole",
        {"$patch": "replace", "items": [{"role": "user", "content": "x"}]},
        [{"role": "user", "content": "x"}],
    ),
    (
        "model.tools",
        "a function tool merges by function.name (deeply), a new one is appended",
        [
            {"function": {"name": "book", "description": "Book a visit"}},
            {"type": "function", "function": {"name": "cancel"}},
        ],
        [
            {"type": "function", "function": {"name": "book", "description": "Book a visit"}},
            {"type": "endCall"},
            {"type": "function", "function": {"name": "cancel"}},
        ],
    ),
    (
        "model.tools",
        "other tool types by type; $delete by type",
        [{"type": "endCall", "$delete": True}, {"type": "transferCall"}],
        [
            {"type": "function", "function": {"name": "book", "description": "Book"}},
            {"type": "transferCall"},
        ],
    ),
    (
        "model.tools",
        "$delete of a function tool by function.name",
        [{"function": {"name": "book"}, "$delete": True}],
        [{"type": "endCall"}],
    ),
    (
        "model.toolIds",
        "a set: new ids appended, known ones kept once",
        ["id-3", "id-1"],
        ["id-1", "id-2", "id-3"],
    ),
    ("model.toolIds", "$delete of a value", [{"$delete": True, "value": "id-1"}], ["id-2"]),
    (
        "tools",
        "a set of tool names",
        ["transfer", "book_appointment"],
        ["book_appointment", "end_call", "transfer"],
    ),
    ("tools", "$patch: replace", {"$patch": "replace", "items": ["x"]}, ["x"]),
    ("clientMessages", "a set", ["hang", {"$delete": True, "value": "transcript"}], ["hang"]),
    (
        "serverMessages",
        "a set",
        ["hang", "status-update"],
        ["end-of-call-report", "status-update", "hang"],
    ),
    (
        "serverMessages",
        "$delete of a value absent is a no-op",
        [{"$delete": True, "value": "nope"}],
        ["end-of-call-report", "status-update"],
    ),
    ("endCallPhrases", "a set", ["bye now"], ["goodbye", "bye now"]),
    ("credentialIds", "a set", [{"$delete": True, "value": "cred-1"}, "cred-2"], ["cred-2"]),
    ("transcriber.keywords", "a set", ["Smile:1"], ["Acme:2", "Smile:1"]),
    ("transcriber.keyterm", "a set", ["crown"], ["molar", "crown"]),
    ("function.parameters.required", "a set (a tool)", ["when", "patient"], ["patient", "when"]),
]

TOOL_REF = "book-tool@1"
TOOL_BASE: dict[str, Any] = {
    "apiVersion": "reconciler/v1",
    "kind": "ToolTemplate",
    "metadata": {"name": "book-tool", "version": 1},
    "parameters": {"practiceName": {"type": "string"}},
    "tool": {
        "type": "function",
        "function": {
            "name": "book",
            "description": "Book a visit at ${practiceName}",
            "parameters": {
                "type": "object",
                "properties": {"patient": {"type": "string"}, "when": {"type": "string"}},
                "required": ["patient"],
            },
        },
        "server": {"url": "https://hooks.example.com/vapi"},
    },
}


def rendered_tool(overrides: dict[str, Any], data: dict[str, Any] | None = None) -> dict[str, Any]:
    made = load_template(data or copy.deepcopy(TOOL_BASE), "specs/templates/book-tool.yaml")
    given = TemplateUse.model_validate(
        {"template": TOOL_REF, "with": {"practiceName": "Acme"}, "overrides": overrides}
    )
    return render(made, given, org_file=ORG_FILE, field="spec.tools.book").assistant


def nest(path: str, value: Any) -> dict[str, Any]:
    for part in reversed(path.split(".")):
        value = {part: value}
    return value


@pytest.mark.parametrize(
    ("path", "override", "expected"),
    [pytest.param(p, o, e, id=f"{p}: {why}") for p, why, o, e in MERGE_TABLE],
)
def test_merge_table(path: str, override: Any, expected: Any) -> None:
    made = rendered_tool if path.startswith("function.") else rendered
    assert at(made(nest(path, override)), path) == expected


def test_merge_table_covers_every_declared_list_path() -> None:
    """A rule added to LIST_RULES without a row here fails: the table is the contract."""
    assert {row[0] for row in MERGE_TABLE} == set(LIST_RULES)


@pytest.mark.parametrize("path", sorted(LIST_RULES))
def test_every_declared_list_path_accepts_replace_and_merges_into_nothing(path: str) -> None:
    """Each declared path: `$patch: replace` works, and an override's list where the template
    has none is merged into an empty list (no error)."""
    rule = LIST_RULES[path]
    item: Any = {k.split(".")[0]: "x" for k in rule.keys[:1]} if rule.keys else "x"
    if rule.keys and rule.keys[0] == "function.name":
        item = {"type": "function", "function": {"name": "x"}}
    if path.startswith("function."):  # a tool's
        out = rendered_tool(nest(path, {"$patch": "replace", "items": [item]}))
        assert at(out, path) == [item]
        data = copy.deepcopy(TOOL_BASE)
        data["tool"]["function"]["parameters"].pop("required")
        assert at(rendered_tool(nest(path, [item]), data), path) == [item]
        return
    out = rendered(nest(path, {"$patch": "replace", "items": [item]}))
    assert at(out, path) == [item]
    data = copy.deepcopy(BASE)
    top, _, rest = path.partition(".")
    if rest:
        data["assistant"][top].pop(rest)
    else:
        data["assistant"].pop(top)
    bare = load_template(data, TEMPLATE_FILE)
    out = render(bare, use(nest(path, [item])), org_file=ORG_FILE, field=FIELD).assistant
    assert at(out, path) == [item]


def test_maps_merge_deeply_override_wins_and_null_removes() -> None:
    out = rendered(
        {
            "model": {"temperature": 0.7, "maxTokens": 200},
            "voice": {"voiceId": None, "stability": 0.5},
            "metadata": {"tier": None, "region": "eu"},
            "endCallMessage": "Bye",
        }
    )
    assert out["model"]["temperature"] == 0.7
    assert out["model"]["maxTokens"] == 200
    assert out["model"]["provider"] == "openai"  # untouched siblings stay
    assert out["voice"] == {"provider": "11labs", "stability": 0.5}
    assert out["metadata"] == {"recording": "false", "region": "eu"}
    assert list(out)[-1] == "endCallMessage"  # new keys come after the template's


def test_null_removes_a_whole_field_and_a_missing_key_is_fine() -> None:
    out = rendered({"hooks": None, "backgroundSound": None})
    assert "hooks" not in out
    assert "backgroundSound" not in out


# --- refusals of the merge --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        pytest.param(
            {"hooks": [{"on": "x"}]},
            "hooks",
            "list hooks has no declared merge key",
            id="undeclared top-level list",
        ),
        pytest.param(
            {"voice": {"fallbackPlan": {"voices": [{"provider": "x"}]}}},
            "voice.fallbackPlan.voices",
            "no declared merge key",
            id="undeclared nested list where the template has none",
        ),
        pytest.param(
            {
                "model": {
                    "tools": [{"function": {"name": "book", "parameters": {"required": ["a"]}}}]
                }
            },
            "model.tools[0].function.parameters.required",
            "list model.tools[].function.parameters.required has no declared merge key",
            id="undeclared list inside a merged item",
        ),
        pytest.param(
            {"tools": "x"}, "tools", "the template has a list here", id="scalar over a list"
        ),
        pytest.param(
            {"tools": {"a": 1}}, "tools", "the template has a list here", id="map over a list"
        ),
        pytest.param(
            {"tools": {"$patch": "merge", "items": []}},
            "tools",
            "write {$patch: replace, items: [...]}",
            id="other $patch",
        ),
        pytest.param(
            {"tools": {"$patch": "replace", "items": [], "x": 1}},
            "tools",
            "write {$patch: replace",
            id="$patch with other keys",
        ),
        pytest.param(
            {"tools": {"$patch": "replace", "items": "x"}},
            "tools.items",
            "items must be a list",
            id="$patch items not a list",
        ),
        pytest.param(
            {"model": {"messages": [{"content": "x"}]}},
            "model.messages[0]",
            "needs its merge key role",
            id="item without its key",
        ),
        pytest.param(
            {"model": {"messages": ["x"]}},
            "model.messages[0]",
            "are maps keyed by role",
            id="plain value in a keyed list",
        ),
        pytest.param({"tools": [{"name": "x"}]}, "tools[0]", "are plain values", id="map in a set"),
        pytest.param(
            {"model": {"messages": [{"role": "user"}, {"role": "user"}]}},
            "model.messages[1]",
            "names 'user' twice",
            id="same key twice",
        ),
        pytest.param(
            {"tools": [{"$delete": "yes", "value": "x"}]},
            "tools[0].$delete",
            "takes only `true`",
            id="$delete not true",
        ),
        pytest.param(
            {"tools": [{"$delete": True}]},
            "tools[0]",
            "with {$delete: true, value: ...}",
            id="set $delete without value",
        ),
        pytest.param(
            {"model": {"messages": [{"role": "user", "content": "x", "$delete": True}]}},
            "model.messages[0]",
            "gives its merge key and nothing else",
            id="$delete with more fields",
        ),
        pytest.param(
            {"model": {"$delete": True}},
            "model.$delete",
            "not a directive here",
            id="directive in a map",
        ),
        pytest.param(
            {"nope": 1}, "nope", "nope is not a field of the assistant spec", id="unknown field"
        ),
    ],
)
def test_override_refusals_are_one_line_naming_file_template_field(
    overrides: dict[str, Any], field: str, fragment: str
) -> None:
    error = refused(overrides)
    assert_one_line(error, ORG_FILE, f"{FIELD}.overrides.{field}", fragment)


def test_every_undeclared_list_refusal_says_how_to_replace() -> None:
    for overrides in ({"hooks": []}, {"transportConfigurations": [{}]}, {"credentials": []}):
        assert "{$patch: replace, items: [...]}" in str(refused(overrides))


def test_undeclared_list_replaced_on_request() -> None:
    out = rendered({"hooks": {"$patch": "replace", "items": [{"on": "x", "do": []}]}})
    assert out["hooks"] == [{"on": "x", "do": []}]


def test_template_list_with_duplicate_keys_refuses_a_merge_into_it() -> None:
    data = copy.deepcopy(BASE)
    data["assistant"]["model"]["messages"].append({"role": "system", "content": "again"})
    tpl = load_template(data, TEMPLATE_FILE)
    with pytest.raises(TemplateError, match=r"model\.messages\[2\] has the same role"):
        render(
            tpl, use({"model": {"messages": [{"role": "user"}]}}), org_file=ORG_FILE, field=FIELD
        )
    # untouched, the template's own list stands
    assert render(tpl, use(), org_file=ORG_FILE, field=FIELD).assistant["model"]["messages"][2]


# --- substitution -----------------------------------------------------------------------------


def test_substitution_in_strings_only_and_types_never_change() -> None:
    out = rendered(seats=4, recording=True, voice="sarah")
    assert out["name"] == "Acme Reception"
    assert out["firstMessage"] == "Thanks for calling Acme. Seats: 4"
    assert out["voice"]["voiceId"] == "sarah"
    assert out["metadata"]["recording"] == "true"  # whole-string boolean stays a string
    assert out["maxDurationSeconds"] == 300
    assert out["model"]["temperature"] == 0.3


def test_whole_string_integer_parameter_stays_a_string() -> None:
    data = copy.deepcopy(BASE)
    data["assistant"]["metadata"]["seats"] = "${seats}"
    out = render(
        load_template(data, TEMPLATE_FILE), use(seats=7), org_file=ORG_FILE, field=FIELD
    ).assistant
    assert out["metadata"]["seats"] == "7"


def test_a_parameter_in_a_typed_field_is_refused_not_coerced() -> None:
    data = copy.deepcopy(BASE)
    data["assistant"]["maxDurationSeconds"] = "${seats}"
    tpl = load_template(data, TEMPLATE_FILE)
    with pytest.raises(TemplateError) as caught:
        render(tpl, use(seats=600), org_file=ORG_FILE, field=FIELD)
    assert_one_line(
        caught.value,
        ORG_FILE,
        f"{FIELD}.maxDurationSeconds",
        "the rendered assistant is refused",
        "valid integer",
    )


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("$${practiceName}", "${practiceName}"),
        ("cost $5 and $$5", "cost $5 and $$5"),
        ("$${x} and ${practiceName}", "${x} and Acme"),
        ("$$${practiceName}", "$${practiceName}"),  # a plain `$`, then `$${` escapes
        ("${practiceName}${practiceName}", "AcmeAcme"),
        ("{practiceName} $ {practiceName}", "{practiceName} $ {practiceName}"),
    ],
)
def test_escapes(written: str, expected: str) -> None:
    data = copy.deepcopy(BASE)
    data["assistant"]["endCallMessage"] = written
    out = render(load_template(data, TEMPLATE_FILE), use(), org_file=ORG_FILE, field=FIELD)
    assert out.assistant["endCallMessage"] == expected


def test_a_value_given_is_never_scanned_again() -> None:
    assert rendered(practiceName="${voice} $${x}")["name"] == "${voice} $${x} Reception"


def test_overrides_are_not_substituted() -> None:
    assert rendered({"endCallMessage": "${practiceName}"})["endCallMessage"] == "${practiceName}"


# --- every error: one line, file, template, field ---------------------------------------------


@pytest.mark.parametrize(
    ("given", "field", "fragment"),
    [
        pytest.param(
            {"nope": "x"},
            "with.nope",
            "unknown parameter nope (declared: practiceName,",
            id="unknown parameter",
        ),
        pytest.param(
            {"practiceName": None},
            "with.practiceName",
            "expects a string, got NoneType",
            id="null value",
        ),
        pytest.param(
            {"practiceName": 3},
            "with.practiceName",
            "expects a string, got integer 3",
            id="string wrong type",
        ),
        pytest.param(
            {"seats": "3"},
            "with.seats",
            "expects an integer, got string '3'",
            id="integer wrong type",
        ),
        pytest.param(
            {"seats": True},
            "with.seats",
            "expects an integer, got boolean True",
            id="boolean is no integer",
        ),
        pytest.param(
            {"recording": 1},
            "with.recording",
            "expects a boolean, got integer 1",
            id="boolean wrong type",
        ),
        pytest.param(
            {"voice": "bob"},
            "with.voice",
            "'bob' is not one of burt, sarah",
            id="enum value not allowed",
        ),
        pytest.param(
            {"practiceName": "A" * 31},
            "with.practiceName",
            "is 31 characters, over maxLength 30",
            id="over maxLength",
        ),
    ],
)
def test_with_errors(given: dict[str, Any], field: str, fragment: str) -> None:
    assert_one_line(refused(**given), ORG_FILE, f"{FIELD}.{field}", fragment)


def test_missing_required_parameter() -> None:
    tpl = template()
    bare = TemplateUse.model_validate({"template": REF})
    with pytest.raises(TemplateError) as caught:
        render(tpl, bare, org_file=ORG_FILE, field=FIELD)
    assert_one_line(
        caught.value, ORG_FILE, f"{FIELD}.with", "missing required parameter(s): practiceName"
    )


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"template": "dental-receptionist"}, "template", "should match pattern"),
        ({"template": "dental-receptionist@0"}, "template", "should match pattern"),
        ({"template": REF, "with": [1]}, "with", "valid dictionary"),
        ({"template": REF, "overrides": {}, "extra": 1}, "extra", "Extra inputs"),
        ({"with": {}}, "template", "Field required"),
    ],
)
def test_use_errors(data: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as caught:
        parse_use(data, org_file=ORG_FILE, field=FIELD)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{ORG_FILE}: {FIELD}.{field}: template "), text
    assert fragment in text, text


def test_use_parsed() -> None:
    parsed = parse_use({"template": REF, "with": {"a": 1}}, org_file=ORG_FILE, field=FIELD)
    assert (parsed.name, parsed.version, parsed.with_, parsed.overrides) == (
        "dental-receptionist",
        3,
        {"a": 1},
        {},
    )


def test_wrong_template_version_asked() -> None:
    other = TemplateUse.model_validate({"template": "dental-receptionist@4"})
    with pytest.raises(TemplateError) as caught:
        render(template(), other, org_file=ORG_FILE, field=FIELD)
    assert_one_line(caught.value, ORG_FILE, f"{FIELD}.template", "dental-receptionist@4 asked")


def test_rendered_result_breaking_an_assistant_rule() -> None:
    error = refused({"name": "A" * 41})
    assert_one_line(error, ORG_FILE, f"{FIELD}.name", "at most 40 characters")
    error = refused({"metadata": {"orgId": "x"}})
    assert_one_line(error, ORG_FILE, f"{FIELD}.metadata", "reserved for the reconciler")


def mutate(edit: Any) -> TemplateError:
    data = copy.deepcopy(BASE)
    edit(data)
    with pytest.raises(TemplateError) as caught:
        load_template(data, TEMPLATE_FILE)
    return caught.value


@pytest.mark.parametrize(
    ("edit", "field", "fragment"),
    [
        pytest.param(
            lambda d: d["assistant"].update(endCallMessage="${nope}"),
            "assistant.endCallMessage",
            "unknown parameter ${nope} (declared:",
            id="unknown parameter in body",
        ),
        pytest.param(
            lambda d: d["parameters"].update(unused={"type": "string", "default": "x"}),
            "parameters.unused",
            "parameter unused is never used",
            id="unused parameter",
        ),
        pytest.param(
            lambda d: d["assistant"].update(endCallMessage="${a + b}"),
            "assistant.endCallMessage",
            "is not a parameter name (no expressions",
            id="expression",
        ),
        pytest.param(
            lambda d: d["assistant"].update(endCallMessage="${practiceName"),
            "assistant.endCallMessage",
            "without a closing",
            id="unclosed",
        ),
        pytest.param(
            lambda d: d["assistant"].update(endCallMessage="${}"),
            "assistant.endCallMessage",
            "is not a parameter name",
            id="empty",
        ),
        pytest.param(
            lambda d: d["assistant"]["metadata"].update({"${practiceName}": "x"}),
            'assistant.metadata["${practiceName}"]',
            "keys are never substituted",
            id="placeholder in a key",
        ),
        pytest.param(
            lambda d: d["assistant"].update(nope=1),
            "assistant.nope",
            "nope is not a field of the assistant spec",
            id="unknown field",
        ),
        pytest.param(
            lambda d: d["metadata"].update(version=0),
            "metadata.version",
            "greater than or equal to 1",
            id="version 0",
        ),
        pytest.param(
            lambda d: d["metadata"].update(version="3"),
            "metadata.version",
            "valid integer",
            id="version as text",
        ),
        pytest.param(
            lambda d: d["metadata"].update(name="Dental!"),
            "metadata.name",
            "should match pattern",
            id="name not a slug",
        ),
        pytest.param(
            lambda d: d["parameters"]["voice"].pop("values"),
            "parameters.voice",
            "`values` is given for an enum",
            id="enum without values",
        ),
        pytest.param(
            lambda d: d["parameters"]["seats"].update(maxLength=3),
            "parameters.seats",
            "`maxLength` is for strings only",
            id="maxLength on integer",
        ),
        pytest.param(
            lambda d: d["parameters"]["seats"].update(default="2"),
            "parameters.seats",
            "default expects an integer",
            id="default of the wrong type",
        ),
        pytest.param(
            lambda d: d["parameters"]["voice"].update(default="bob"),
            "parameters.voice",
            "default 'bob' is not one of",
            id="enum default",
        ),
        pytest.param(
            lambda d: d["parameters"].update({"bad-name": {"type": "string"}}),
            "parameters.bad-name",
            "should match pattern",
            id="parameter name",
        ),
        pytest.param(
            lambda d: d.update(rollout={"waves": [{"orgs": ["a1"], "percent": 5}]}),
            "rollout.waves.0",
            "not both",
            id="rollout wave",
        ),
        pytest.param(
            lambda d: d.update(extra=1),
            "extra",
            "Extra inputs are not permitted",
            id="extra top-level key",
        ),
    ],
)
def test_template_errors(edit: Any, field: str, fragment: str) -> None:
    error = mutate(edit)
    text = str(error)
    assert "\n" not in text, text
    assert text.startswith(f"{TEMPLATE_FILE}: {field}: template "), text
    assert fragment in text, text


def test_template_error_names_the_template() -> None:
    error = mutate(lambda d: d["assistant"].update(endCallMessage="${nope}"))
    assert error.template == REF
    assert error.file == TEMPLATE_FILE


def test_a_rollout_placeholder_is_parsed() -> None:
    data = copy.deepcopy(BASE)
    data["rollout"] = {
        "waves": [{"orgs": ["acme-dental"], "soakSeconds": 600}, {"percent": 25}, {"percent": 100}]
    }
    rollout = load_template(data, TEMPLATE_FILE).model.rollout
    assert rollout is not None
    assert [w.percent for w in rollout.waves] == [None, 25, 100]


# --- the lock ---------------------------------------------------------------------------------


def test_digest_is_of_content_not_text() -> None:
    text = yaml.safe_dump(BASE, sort_keys=True)
    reordered = yaml.safe_load(yaml.safe_dump(BASE, sort_keys=False, default_flow_style=True))
    a = digest(load_template(yaml.safe_load(text), TEMPLATE_FILE).model)
    b = digest(load_template(reordered, TEMPLATE_FILE).model)
    assert a == b
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", a)
    # pinned: the canonical form of a template version must never change under it
    assert a == digest(template().model)
    changed = copy.deepcopy(BASE)
    changed["assistant"]["model"]["temperature"] = 0.4
    assert digest(load_template(changed, TEMPLATE_FILE).model) != a


def test_digest_is_stable_across_runs() -> None:
    """A fixed template has a fixed digest: a change to canonical JSON would re-pin every
    version in every specs tree."""
    minimal = {
        "apiVersion": "reconciler/v1",
        "kind": "AssistantTemplate",
        "metadata": {"name": "mini", "version": 1},
        "assistant": {"name": "Mini", "firstMessage": "Hé"},
    }
    assert digest(load_template(minimal, "m.yaml").model) == (
        "sha256:"
        + __import__("hashlib")
        .sha256(
            b'{"apiVersion":"reconciler/v1","assistant":{"firstMessage":"H\xc3\xa9","name":"Mini"},'
            b'"kind":"AssistantTemplate","metadata":{"name":"mini","version":1}}'
        )
        .hexdigest()
    )


def test_lock_adds_new_versions_and_refuses_a_changed_one() -> None:
    v3 = template()
    lock, problems = check_lock([v3], Lock())
    assert problems == []
    assert lock.digests == {REF: digest(v3.model)}
    assert check_lock([v3], lock) == (lock, [])

    edited = template(firstMessage="Hello from ${practiceName}, ${seats}")
    same_lock, problems = check_lock([edited], lock)
    assert same_lock == lock  # the locked digest stays
    assert len(problems) == 1
    text = str(problems[0])
    assert "\n" not in text
    assert text.startswith(f"{TEMPLATE_FILE}: metadata.version: template {REF}: ")
    assert "content changed since version 3 was locked" in text
    assert "give it a new metadata.version" in text

    data = copy.deepcopy(BASE)
    data["metadata"]["version"] = 4
    data["assistant"]["firstMessage"] = "Hello from ${practiceName}, ${seats}"
    v4 = load_template(data, TEMPLATE_FILE)
    bumped, problems = check_lock([v4], lock)
    assert problems == []
    assert set(bumped.digests) == {REF, "dental-receptionist@4"}  # the old version is kept


def test_lock_refuses_two_files_with_one_version() -> None:
    a = template()
    b = Template("specs/templates/copy.yaml", a.model)
    _, problems = check_lock([a, b], Lock())
    assert [str(p) for p in problems] == [
        f"specs/templates/copy.yaml: metadata.version: template {REF}: {REF} is also defined "
        f"in {TEMPLATE_FILE}"
    ]


def test_lock_file_round_trip_and_order() -> None:
    lock = Lock(
        {
            "b-tpl@10": "sha256:" + "1" * 64,
            "b-tpl@2": "sha256:" + "2" * 64,
            "a-tpl@1": "sha256:" + "3" * 64,
        }
    )
    text = dump_lock(lock)
    assert parse_lock(text) == lock
    assert [line.split(":")[0].strip() for line in text.splitlines() if "@" in line] == [
        "a-tpl@1",
        "b-tpl@2",
        "b-tpl@10",
    ]
    assert dump_lock(parse_lock(text)) == text
    assert parse_lock("") == Lock()


@pytest.mark.parametrize(
    "text",
    [
        "apiVersion: v2\n",
        "apiVersion: reconciler/v1\nkind: Other\n",
        "apiVersion: reconciler/v1\ntemplates: [1]\n",
        "apiVersion: reconciler/v1\ntemplates: {nope: sha256:x}\n",
        "apiVersion: reconciler/v1\ntemplates: {a-b@1: md5:x}\n",
        "apiVersion: reconciler/v1\nextra: 1\n",
    ],
)
def test_lock_file_refusals(text: str) -> None:
    with pytest.raises(TemplateError) as caught:
        parse_lock(text, "specs/templates/templates.lock")
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("specs/templates/templates.lock: ")


# --- origins ----------------------------------------------------------------------------------


def test_origins_of_every_leaf() -> None:
    out = render(
        template(),
        use(
            {
                "model": {"messages": [{"role": "system", "content": "Short."}]},
                "metadata": {"a.b": "x"},
                "tools": ["transfer"],
            },
            voice="sarah",
        ),
        org_file=ORG_FILE,
        field=FIELD,
    )
    o = out.origins
    tpl = Origin("template", REF)
    assert o["name"] == Origin("with", REF, ("practiceName",))
    assert o["firstMessage"] == Origin("with", REF, ("practiceName",), ("seats",))
    assert str(o["firstMessage"]) == f"template {REF} (with: practiceName; default: seats)"
    assert o["voice.voiceId"] == Origin("with", REF, ("voice",))
    assert o["metadata.recording"] == Origin("default", REF, (), ("recording",))
    assert str(o["metadata.recording"]) == f"template {REF} (default: recording)"
    assert o["model.provider"] == tpl
    assert str(tpl) == f"template {REF}"
    assert o["model.messages[0].role"] == tpl  # the merge key matched, it did not change
    assert o["model.messages[0].content"].source == "override"
    assert str(o["model.messages[0].content"]) == "override"
    assert o["model.messages[1].content"] == tpl
    assert o['metadata["a.b"]'].source == "override"
    assert o["tools[0]"] == tpl
    assert o["tools[2]"].source == "override"
    # one origin per leaf of the result, no more
    leaves = set()

    def walk(v: Any, p: tuple[str | int, ...]) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, (*p, k))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, (*p, i))
        else:
            leaves.add(format_path(p))

    walk(out.assistant, ())
    assert set(o) == leaves


# --- properties -------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    name=_text.filter(lambda s: len(s) <= 30),
    voice=st.sampled_from(["burt", "sarah"]),
    seats=st.integers(-(10**6), 10**6),
    recording=st.booleans(),
)
def test_rendering_is_deterministic_and_empty_override_is_the_substituted_body(
    name: str, voice: str, seats: int, recording: bool
) -> None:
    data = copy.deepcopy(BASE)
    data["assistant"]["name"] = "Reception"  # the 40-character rule is not under test here
    data["assistant"]["endCallMessage"] = "${practiceName}"
    tpl = load_template(data, TEMPLATE_FILE)
    given_ = {"practiceName": name, "voice": voice, "seats": seats, "recording": recording}
    the_use = TemplateUse.model_validate({"template": REF, "with": given_})
    first = render(tpl, the_use, org_file=ORG_FILE, field=FIELD)
    second = render(tpl, the_use, org_file=ORG_FILE, field=FIELD)
    assert first.assistant == second.assistant
    assert first.origins == second.origins
    text = {
        "practiceName": name,
        "voice": voice,
        "seats": str(seats),
        "recording": "true" if recording else "false",
    }

    def substituted(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: substituted(x) for k, x in v.items()}
        if isinstance(v, list):
            return [substituted(x) for x in v]
        if isinstance(v, str):
            return re.sub(r"\$\{(\w+)\}", lambda m: text[m[1]], v)
        return v

    assert first.assistant == substituted(data["assistant"])
    assert all(origin.source != "override" for origin in first.origins.values())


# --- the docs ---------------------------------------------------------------------------------


def test_docs_list_every_declared_list_path() -> None:
    doc = (ROOT / "docs" / "templates.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)` \|", doc, re.MULTILINE))
    assert rows == set(LIST_RULES), "docs/templates.md's merge table differs from LIST_RULES"
    for rule in LIST_RULES.values():
        assert f"| `{rule.path}` | {rule.merge_key} |" in doc


def test_one_template_renders_many_orgs_and_none_sees_anothers_values() -> None:
    """The template body is compiled once and shared: each org's parameters and overrides stay
    its own, whatever was rendered before it."""
    shared = template()
    first = render(
        shared,
        use({"model": {"messages": [{"role": "user", "content": "Org one only."}]}}),
        org_file=ORG_FILE,
        field=FIELD,
    )
    second = render(shared, use(practiceName="Other"), org_file=ORG_FILE, field=FIELD)
    again = render(shared, use(), org_file=ORG_FILE, field=FIELD)
    assert "Org one only." in str(first.assistant) and "Org one only." not in str(second.assistant)
    assert "Other" in str(second.assistant) and "Other" not in str(again.assistant)
    assert again.assistant == rendered()
    assert first.overridden == {"model.messages[2].role", "model.messages[2].content"}  # new
    assert second.overridden == frozenset() and again.overridden == frozenset()
    assert {p for p, o in first.origins.items() if o.source == "override"} == first.overridden


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"server": {"url": "https://x", "headers": {"x-token": "${practiceName}"}}},
            "assistant.server.headers.x-token",
        ),
        ({"metadata": {"apiKey": "key-${practiceName}"}}, "assistant.metadata.apiKey"),
        (
            {"voice": {"provider": "11labs", "secretNote": "${practiceName}"}},
            "assistant.voice.secretNote",
        ),
    ],
    ids=["header", "api-key", "secret-word"],
)
def test_secrets_are_never_parameters(body: dict[str, Any], field: str) -> None:
    """A parameter where the plan masks a value as a secret would carry a secret from an org
    file's plaintext `with` to Vapi: refused where the template is read."""
    data = copy.deepcopy(BASE)
    data["assistant"].update(body)
    with pytest.raises(TemplateError) as caught:
        load_template(data, TEMPLATE_FILE)
    assert caught.value.field == field
    assert "secrets are never parameters" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_value_used_many_times_cannot_blow_the_rendering_up() -> None:
    """A 300 KiB value of a parameter the template uses four times would make 1.2 MiB of text:
    refused before anything is built, naming `with`."""
    data = copy.deepcopy(BASE)
    data["parameters"]["blob"] = {"type": "string"}
    data["assistant"]["endCallPhrases"] = ["${blob}", "${blob}", "a ${blob}", "${blob}!"]
    big = load_template(data, TEMPLATE_FILE)
    given = TemplateUse.model_validate(
        {"template": REF, "with": {"practiceName": "Acme", "blob": "x" * (300 * 1024)}}
    )
    with pytest.raises(TemplateError) as caught:
        render(big, given, org_file=ORG_FILE, field=FIELD)
    assert caught.value.field.endswith(".with")
    assert "over 1,048,576" in caught.value.message
    small = TemplateUse.model_validate(
        {"template": REF, "with": {"practiceName": "Acme", "blob": "x" * 1000}}
    )
    assert render(big, small, org_file=ORG_FILE, field=FIELD).assistant["endCallPhrases"][3] == (
        "x" * 1000 + "!"
    )


def test_a_tool_template_renders_a_tool_checked_as_one() -> None:
    """A ToolTemplate's body is a spec.tools entry: parameters substituted, overrides merged
    (its keys are Vapi's: any top-level field), the result checked as a tool."""
    out = rendered_tool({"async": True, "function": {"description": "Book it"}})
    assert out["function"]["description"] == "Book it"
    assert out["function"]["parameters"]["required"] == ["patient"]
    assert out["async"] is True and out["type"] == "function"
    plain = rendered_tool({})
    assert plain["function"]["description"] == "Book a visit at Acme"
    refused = copy.deepcopy(TOOL_BASE)
    refused["tool"]["id"] = "tool-1"  # a field Vapi sets
    with pytest.raises(TemplateError) as caught:
        rendered_tool({}, refused)
    assert "the rendered tool is refused" in caught.value.message
    with pytest.raises(TemplateError) as caught:
        load_template({**copy.deepcopy(TOOL_BASE), "rollout": {"waves": [{"percent": 100}]}}, "t")
    assert "rollout" in str(caught.value)  # waves are for assistant templates
