"""Templates in a specs tree (issue 17): found under `templates/`, held to their lock by
`validate`, rendered into the org's assistants before anything else sees them, shown by
`reconciler render`, and applied to Vapi like any assistant."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.spec.cache import SpecCache
from reconciler.spec.loader import validate_tree
from tests.helpers import SpecDir, clear_faults, fault, live, org_doc, writes
from tests.helpers.templates import put, template, uses

ENC = "ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]"  # shaped as sops writes it


def offline_org(slug: str, assistants: dict[str, Any]) -> dict[str, Any]:
    """An org file as committed (credentials shaped like sops's), for the offline commands."""
    doc = org_doc(slug, assistants=assistants)
    doc["spec"]["credentials"] = {"vapi": {"apiKey": ENC, "webhookSecret": ENC}}
    doc["sops"] = {"age": [], "mac": ENC, "version": "3.11.0"}
    return doc


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "specs"
    put(root, "templates/front-desk.yaml", template())
    put(root, "acme.yaml", offline_org("acme", {"inbound": uses()}))
    plain = {"inbound": {"name": "Plain", "firstMessage": "Hi"}}
    put(root, "plain.yaml", offline_org("plain", plain))
    return root


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


# -- validate and the lock -----------------------------------------------------------------------


def test_validate_records_a_new_version_once_then_changes_nothing(tree: Path, cli: Any) -> None:
    lock = tree / "templates" / "templates.lock"
    first = cli("validate", str(tree))
    assert first.code == 0, first.out + first.err
    assert f"{lock}: recorded front-desk@1" in first.out
    assert "2 spec(s) valid" in first.out
    recorded = yaml.safe_load(lock.read_text())["templates"]
    assert list(recorded) == ["front-desk@1"] and recorded["front-desk@1"].startswith("sha256:")
    before = lock.stat().st_mtime_ns
    second = cli("validate", str(tree))
    assert second.code == 0 and "recorded" not in second.out
    assert lock.stat().st_mtime_ns == before


def test_locked_refuses_an_unrecorded_version_and_writes_nothing(tree: Path, cli: Any) -> None:
    run = cli("validate", str(tree), "--locked")
    assert run.code == 1
    assert "templates.front-desk@1: not recorded: run `reconciler validate`" in run.out
    assert not (tree / "templates" / "templates.lock").exists()


def test_a_changed_template_under_a_locked_version_is_refused_with_its_orgs_only(
    tree: Path, cli: Any
) -> None:
    assert cli("validate", str(tree)).code == 0
    lock_text = (tree / "templates" / "templates.lock").read_text()
    put(tree, "templates/front-desk.yaml", template(firstMessage="Hello ${practiceName}!"))
    result = validate_tree(tree)
    shown = [str(p) for p in result.problems]
    assert len(shown) == 2, shown
    assert "front-desk.yaml: metadata.version: template front-desk@1: content changed" in shown[0]
    assert "give it a new metadata.version" in shown[0]
    assert shown[1].startswith(f"{tree / 'acme.yaml'}:")
    assert "spec.assistants.inbound.template: template front-desk@1: refused: see" in shown[1]
    assert [s.org.metadata.slug for s in result.specs] == ["plain"]  # the others carry on
    run = cli("validate", str(tree))
    assert run.code == 1
    assert (tree / "templates" / "templates.lock").read_text() == lock_text  # never rewritten


def test_a_new_version_is_recorded_beside_the_old_one(tree: Path, cli: Any) -> None:
    assert cli("validate", str(tree)).code == 0
    put(tree, "templates/front-desk-2.yaml", template(2, firstMessage="Hi ${practiceName}!"))
    run = cli("validate", str(tree))
    assert run.code == 0, run.out
    assert "recorded front-desk@2" in run.out
    locked = yaml.safe_load((tree / "templates" / "templates.lock").read_text())["templates"]
    assert list(locked) == ["front-desk@1", "front-desk@2"]


@pytest.mark.parametrize(
    ("assistant", "expected"),
    [
        (
            uses("front-desk@7"),
            "spec.assistants.inbound.template: template front-desk@7: not found under "
            "templates/ (versions here: front-desk@1)",
        ),
        (
            uses("reminder@1"),
            "spec.assistants.inbound.template: template reminder@1: not found under "
            "templates/ (no such template)",
        ),
        (
            {"template": "front-desk@1", "with": {"practiceName": "Acme", "colour": "red"}},
            "spec.assistants.inbound.with.colour: template front-desk@1: unknown parameter "
            "colour (declared: practiceName, voice)",
        ),
        (
            {"template": "front-desk@1"},
            "spec.assistants.inbound.with: template front-desk@1: missing required "
            "parameter(s): practiceName",
        ),
        (
            uses(overrides={"hooks": [{"on": "call.ended"}]}),
            "spec.assistants.inbound.overrides.hooks: template front-desk@1: list hooks has no "
            "declared merge key",
        ),
        (
            {"template": "front-desk@1", "with": {"practiceName": "x" * 40}},
            "over maxLength 24",
        ),
    ],
    ids=["other-version", "unknown", "unknown-parameter", "missing", "undeclared-list", "long"],
)
def test_an_org_that_misuses_a_template_is_one_line_naming_file_field_and_template(
    tree: Path, assistant: dict[str, Any], expected: str
) -> None:
    put(tree, "acme.yaml", offline_org("acme", {"inbound": assistant}))
    result = validate_tree(tree)
    assert [s.org.metadata.slug for s in result.specs] == ["plain"]
    (problem,) = result.problems
    assert problem.path == tree / "acme.yaml"
    assert expected in str(problem)
    assert "\n" not in str(problem)


def test_a_rendered_assistant_that_breaks_an_assistant_rule_is_refused(tree: Path) -> None:
    put(
        tree,
        "templates/front-desk.yaml",
        template(name="${practiceName} Front Desk, open every single day"),
    )
    put(tree, "acme.yaml", offline_org("acme", {"inbound": uses()}))
    (problem,) = validate_tree(tree).problems
    assert "spec.assistants.inbound.name: template front-desk@1: the rendered assistant is " in (
        str(problem)
    )


def test_a_template_outside_templates_or_a_broken_lock_is_refused(tree: Path, cli: Any) -> None:
    put(tree, "stray.yaml", template())
    (problem,) = validate_tree(tree).problems
    assert str(problem).endswith("kind: a template belongs under templates/ of the specs folder")
    (tree / "stray.yaml").unlink()
    lock = tree / "templates" / "templates.lock"
    lock.write_text("apiVersion: reconciler/v1\ntemplates: [not, a, map]\n")
    run = cli("validate", str(tree))
    assert run.code == 1
    assert "templates.lock: templates: template *: a map of name@version" in run.out
    assert "template front-desk@1: refused: see" in run.out  # no template trusted without it
    assert lock.read_text() == "apiVersion: reconciler/v1\ntemplates: [not, a, map]\n"


def test_the_cache_recomputes_exactly_the_orgs_that_use_a_changed_template(tree: Path) -> None:
    """serve's spec cache: an org file's outcome is keyed by its bytes and by the content of the
    templates it names (no lock yet, so a change under the same version is taken)."""
    cache: SpecCache[Any] = SpecCache()
    first = validate_tree(tree, cache)
    assert cache.misses == 2 and cache.hits == 0
    validate_tree(tree, cache)
    assert cache.misses == 2 and cache.hits == 2
    put(tree, "templates/front-desk.yaml", template(firstMessage="Hello ${practiceName}!"))
    again = validate_tree(tree, cache)
    assert cache.misses == 3 and cache.hits == 3  # acme computed again, plain from the cache
    acme = next(s for s in again.specs if s.org.metadata.slug == "acme")
    assert acme.org.spec.assistants.by_role()["inbound"].vapi_fields()["firstMessage"] == (
        "Hello Acme Dental!"
    )
    assert first.specs[0].org != acme.org


# -- render ---------------------------------------------------------------------------------------


def test_render_shows_the_effective_assistant_with_each_values_origin(tree: Path, cli: Any) -> None:
    put(
        tree,
        "acme.yaml",
        offline_org("acme", {"inbound": uses(overrides={"firstMessage": "Acme, hello."})}),
    )
    run = cli("render", str(tree), "--org", "acme", "--assistant", "inbound", "--show-origin")
    assert run.code == 0, run.err
    assert lines(run.out) == [
        'name: "Acme Dental Front Desk"  # template front-desk@1 (with: practiceName)',
        'firstMessage: "Acme, hello."  # override',
        "model:",
        '  provider: "openai"  # template front-desk@1',
        '  model: "gpt-4o"  # template front-desk@1',
        "  messages:",
        '    - role: "system"  # template front-desk@1',
        '      content: "You answer for Acme Dental."  # template front-desk@1 (with: practiceName)',
        "voice:",
        '  provider: "11labs"  # template front-desk@1',
        '  voiceId: "burt"  # template front-desk@1 (default: voice)',
        "server:",
        '  url: "https://hooks.example.com/vapi"  # template front-desk@1',
        "  headers:",
        '    x-api-key: "(sensitive)"  # template front-desk@1',
    ]
    assert "s3cr3t" not in run.out + run.err
    as_json = cli("render", str(tree), "--org", "acme", "--format", "json")
    assert as_json.code == 0
    parsed = json.loads(as_json.out)
    assert parsed["inbound"]["name"] == "Acme Dental Front Desk"
    assert parsed["inbound"]["server"]["headers"] == {"x-api-key": "(sensitive)"}
    plain = cli("render", str(tree), "--org", "plain", "--show-origin")
    assert lines(plain.out) == [
        "inbound:",
        '  name: "Plain"  # org file',
        '  firstMessage: "Hi"  # org file',
    ]


def test_render_of_an_unknown_org_or_assistant_is_one_line(tree: Path, cli: Any) -> None:
    run = cli("render", str(tree), "--org", "nope")
    assert run.code == 1 and lines(run.err) == ["error: no valid spec with slug nope"]
    run = cli("render", str(tree), "--org", "acme", "--assistant", "outbound")
    assert run.code == 1
    assert lines(run.err) == ["error: acme has no assistant outbound (it has: inbound)"]


def test_render_previews_an_upgrade_for_every_org_that_uses_the_template(
    tree: Path, cli: Any
) -> None:
    put(tree, "templates/front-desk-2.yaml", template(2, firstMessage="Hi ${practiceName}!"))
    keeps = uses(overrides={"firstMessage": "Our own words."})
    put(tree, "bravo.yaml", offline_org("bravo", {"inbound": keeps}))
    run = cli("render", str(tree), "--template", "front-desk@2", "--all")
    assert run.code == 0, run.out + run.err
    assert lines(run.out) == [
        "acme/inbound: front-desk@1 → front-desk@2:",
        "  @@ -1,3 +1,3 @@",
        '   name: "Acme Dental Front Desk"',
        '  -firstMessage: "Thanks for calling Acme Dental."',
        '  +firstMessage: "Hi Acme Dental!"',
        "   model:",
        "bravo/inbound: front-desk@1 → front-desk@2: unchanged",
        "template front-desk → front-desk@2: 2 assistant(s) of other versions, 1 change, "
        "1 unchanged",
    ]


# -- against Vapi ---------------------------------------------------------------------------------


def test_a_templated_assistant_is_applied_like_any_other_and_converges(
    specs: SpecDir, cli: Any, emulator: str
) -> None:
    put(specs.root, "templates/front-desk.yaml", template())
    doc = org_doc("acme", assistants={"inbound": uses()})
    specs.write(doc)
    first = cli("apply", str(specs.root))
    assert first.code == 0, first.out + first.err
    key = doc["spec"]["credentials"]["vapi"]["apiKey"]
    (assistant,) = live(emulator, key)
    assert assistant["name"] == "Acme Dental Front Desk"
    assert assistant["firstMessage"] == "Thanks for calling Acme Dental."
    assert assistant["voice"]["voiceId"] == "burt"
    assert assistant["server"]["headers"]["x-api-key"] == "s3cr3t"
    done = writes(emulator)
    second = cli("apply", str(specs.root))
    assert second.code == 0 and writes(emulator) == done  # converged: nothing written
    # the org moves to version 2: one PATCH of the one field that changed
    put(specs.root, "templates/front-desk-2.yaml", template(2, firstMessage="Hi ${practiceName}!"))
    doc["spec"]["assistants"]["inbound"] = uses("front-desk@2")
    specs.write(doc)
    plan = cli("plan", str(specs.root))
    assert "firstMessage" in plan.out and "Hi Acme Dental!" in plan.out
    third = cli("apply", str(specs.root))
    assert third.code == 0, third.out + third.err
    (assistant,) = live(emulator, key)
    assert assistant["firstMessage"] == "Hi Acme Dental!"
    assert writes(emulator) == done + 1


def test_a_rollout_shows_its_blast_radius_is_bounded_and_records_each_orgs_version(
    specs: SpecDir, cli: Any, emulator: str, pool: Any
) -> None:
    """Three orgs on front-desk@1 move to @2, whose only change is the greeting: two take it,
    one overrides the greeting (unchanged through its override). Past --max-template-orgs none
    moves; accepted by name, all do, and Postgres records each org's version."""
    put(specs.root, "templates/front-desk.yaml", template())
    put(specs.root, "templates/front-desk-2.yaml", template(2, firstMessage="Hi ${practiceName}!"))
    own = {"firstMessage": "Our own greeting."}
    docs = {
        "alpha": org_doc("alpha", assistants={"inbound": uses()}),
        "bravo": org_doc("bravo", assistants={"inbound": uses()}),
        "kept": org_doc("kept", assistants={"inbound": uses(overrides=own)}),
    }
    for doc in docs.values():
        specs.write(doc)
    assert cli("apply", str(specs.root)).code == 0

    def recorded() -> dict[str, str | None]:
        with pool.connection() as conn:
            rows = conn.execute(
                "SELECT o.slug, a.template FROM assistants a JOIN organizations o"
                " ON o.id = a.org_id ORDER BY o.slug"
            ).fetchall()
        return dict(rows)

    assert recorded() == {"alpha": "front-desk@1", "bravo": "front-desk@1", "kept": "front-desk@1"}
    for doc in docs.values():
        doc["spec"]["assistants"]["inbound"]["template"] = "front-desk@2"
        specs.write(doc)

    plan = cli("plan", str(specs.root), "--detailed-exitcode")
    assert plan.code == 2, plan.out + plan.err
    radius = "template front-desk 1 → 2: 3 orgs, 2 change, 1 unchanged through overrides"
    heading = next(i for i, line in enumerate(plan.lines) if line.startswith("alpha ("))
    assert plan.lines.index(radius) < heading  # the plan starts with it (after the progress)
    assert (
        'firstMessage: "Thanks for calling Acme Dental." -> "Hi Acme Dental!" (from template front-desk@2)'
        in (plan.out)
    )
    assert (
        "assistant inbound" in plan.out and "renders as before (nothing sent to Vapi)" in plan.out
    )
    as_json = json.loads(cli("plan", str(specs.root), "--format", "json").out)
    assert as_json["templates"] == [
        {
            "from": "front-desk@1",
            "to": "front-desk@2",
            "orgs": 3,
            "change": 2,
            "unchanged": 1,
            "org_slugs": ["alpha", "bravo", "kept"],
        }
    ]

    done = writes(emulator)
    bounded = cli("apply", str(specs.root), "--max-template-orgs", "2")
    assert bounded.code == 1
    for slug in docs:  # each refused by name, with how to go on
        assert f"{slug}: failed: template rollout front-desk@2 would move 3 orgs in one run" in (
            bounded.out
        )
    assert "--accept-template-rollout front-desk@2" in bounded.out
    assert writes(emulator) == done  # none moved
    assert set(recorded().values()) == {"front-desk@1"}

    moved = cli(
        "apply",
        str(specs.root),
        "--max-template-orgs",
        "2",
        "--accept-template-rollout",
        "front-desk@2",
    )
    assert moved.code == 0, moved.out + moved.err
    assert writes(emulator) == done + 2  # one PATCH each for alpha and bravo; kept: none
    assert set(recorded().values()) == {"front-desk@2"}
    again = cli("plan", str(specs.root), "--detailed-exitcode")
    assert again.code == 0, again.out  # converged, the move recorded
    assert "template front-desk" not in again.out


def test_a_rollout_in_waves_moves_one_wave_at_a_time_halts_on_a_failure_and_resumes(
    specs: SpecDir, cli: Any, emulator: str, pool: Any
) -> None:
    """front-desk@2 declares two waves: alpha first, then everyone. Runs move alpha only; the
    others stay on version 1 (nothing sent for them) until alpha has been Ready on 2 for its
    soak (0 s here: the run after it is seen Ready). A failure of alpha halts the rollout; the
    others wait until `rollout resume`."""
    put(specs.root, "templates/front-desk.yaml", template())
    v2 = template(2, firstMessage="Hi ${practiceName}!")
    v2["rollout"] = {"waves": [{"orgs": ["alpha"], "soakSeconds": 0}, {"percent": 100}]}
    put(specs.root, "templates/front-desk-2.yaml", v2)
    docs = {s: org_doc(s, assistants={"inbound": uses()}) for s in ("alpha", "bravo", "charlie")}
    for doc in docs.values():
        specs.write(doc)
    assert cli("apply", str(specs.root)).code == 0

    def greetings() -> dict[str, str]:
        return {
            slug: live(emulator, doc["spec"]["credentials"]["vapi"]["apiKey"])[0]["firstMessage"]
            for slug, doc in docs.items()
        }

    def rollout() -> tuple[Any, ...]:
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT wave, halted_reason, done_at IS NOT NULL FROM template_rollouts"
            ).fetchone()
        return tuple(row) if row else ()

    old, new = "Thanks for calling Acme Dental.", "Hi Acme Dental!"
    for doc in docs.values():
        doc["spec"]["assistants"]["inbound"]["template"] = "front-desk@2"
        specs.write(doc)

    # alpha's move fails (Vapi refuses its PATCH): the first wave fails
    fault(emulator, method="PATCH", path="/assistant/{id}", mode="error", status=400, times=None)
    first = cli("apply", str(specs.root))
    assert first.code == 1
    assert "rollout front-desk@2: wave 1 of 2 (alpha), 2 org(s) held on their old version" in (
        first.out
    )
    assert greetings() == {"alpha": old, "bravo": old, "charlie": old}
    assert rollout() == (1, None, False)
    clear_faults(emulator)
    halted = cli("apply", str(specs.root))  # sees alpha Failed: halts, alpha tries again
    assert "HALTED: org alpha of wave 1 failed" in halted.out
    assert rollout() == (1, "org alpha of wave 1 failed", False)
    assert greetings() == {"alpha": new, "bravo": old, "charlie": old}
    still = cli("apply", str(specs.root))  # alpha is Ready now, but only the operator resumes
    assert rollout()[:2] == (1, "org alpha of wave 1 failed")
    held = "inbound: held by the rollout of front-desk@2 until its wave 2 (halted: org alpha"
    assert still.out.count(held) == 2  # bravo and charlie, each told why
    assert greetings() == {"alpha": new, "bravo": old, "charlie": old}
    status = cli("status", "--format", "json")
    shown = json.loads(status.out)["rollouts"][0]
    assert shown["haltedReason"] == "org alpha of wave 1 failed" and shown["orgsDone"] == 1

    resumed = cli("rollout", "resume", "front-desk@2")
    assert resumed.code == 0
    assert "rollout front-desk@2: wave 1 of 2, 1 org(s) on it, resumed" in resumed.out
    assert cli("rollout", "resume", "front-desk@2").code == 1  # not halted any more
    cli("apply", str(specs.root))  # wave 1 Ready on version 2: its soak starts
    assert greetings()["bravo"] == old
    moved = cli("apply", str(specs.root))  # soaked: wave 2 starts and moves in this run
    assert moved.code == 0, moved.out + moved.err
    assert greetings() == {"alpha": new, "bravo": new, "charlie": new}
    assert rollout() == (2, None, False)
    cli("apply", str(specs.root))  # wave 2 Ready
    cli("apply", str(specs.root))  # soaked: done
    assert rollout() == (2, None, True)
    final = cli("plan", str(specs.root), "--detailed-exitcode")
    assert final.code == 0, final.out


def test_a_wave_whose_webhooks_start_failing_halts_the_rollout(
    specs: SpecDir, cli: Any, emulator: str, pool: Any
) -> None:
    """The first wave's org moved and is Ready, but this process's webhook endpoint saw most of
    its webhooks fail since: the rollout halts instead of starting the next wave."""
    from reconciler.controller.run import WEBHOOK_HALT_FAILED
    from reconciler.metrics import ORG_WEBHOOKS

    first, rest = f"wh-{uuid.uuid4().hex[:6]}", f"wh-{uuid.uuid4().hex[:6]}"
    put(specs.root, "templates/front-desk.yaml", template())
    v2 = template(2, firstMessage="Hi ${practiceName}!")
    v2["rollout"] = {"waves": [{"orgs": [first], "soakSeconds": 0}, {"percent": 100}]}
    put(specs.root, "templates/front-desk-2.yaml", v2)
    docs = [org_doc(s, assistants={"inbound": uses()}) for s in (first, rest)]
    for doc in docs:
        specs.write(doc)
    assert cli("apply", str(specs.root)).code == 0
    for doc in docs:
        doc["spec"]["assistants"]["inbound"]["template"] = "front-desk@2"
        specs.write(doc)
    assert cli("apply", str(specs.root)).code == 0  # the first org moves
    for _ in range(WEBHOOK_HALT_FAILED):
        ORG_WEBHOOKS.record(first, "forward_failed")
    halted = cli("apply", str(specs.root))
    assert f"HALTED: webhooks of wave 1 are failing ({first}: " in halted.out
    with pool.connection() as conn:
        (reason,) = conn.execute("SELECT halted_reason FROM template_rollouts").fetchone()
    assert reason.startswith(f"webhooks of wave 1 are failing ({first}: {WEBHOOK_HALT_FAILED} of")
    key = docs[1]["spec"]["credentials"]["vapi"]["apiKey"]
    assert live(emulator, key)[0]["firstMessage"] == "Thanks for calling Acme Dental."  # held


def test_a_tool_from_a_tool_template_is_created_and_its_assistant_refers_to_it(
    specs: SpecDir, cli: Any, emulator: str, tmp_path: Path
) -> None:
    """`kind: ToolTemplate`: the org's spec.tools entry names it, the tool is created with
    the rendered body, and an assistant's `tools: [name]` refers to it as to any tool."""
    tool = {
        "apiVersion": "reconciler/v1",
        "kind": "ToolTemplate",
        "metadata": {"name": "booking", "version": 1},
        "parameters": {"practiceName": {"type": "string"}},
        "tool": {
            "type": "function",
            "function": {"description": "Book a visit at ${practiceName}"},
            "server": {"url": "https://hooks.example.com/vapi"},
        },
    }
    put(specs.root, "templates/booking.yaml", tool)
    model = {"provider": "openai", "model": "gpt-4o"}
    doc = org_doc(
        "acme",
        assistants={"inbound": {"name": "Front desk", "model": model, "tools": ["book"]}},
    )
    doc["spec"]["tools"] = {"book": {"template": "booking@1", "with": {"practiceName": "Acme"}}}
    specs.write(doc)
    run = cli("apply", str(specs.root))
    assert run.code == 0, run.out + run.err
    key = doc["spec"]["credentials"]["vapi"]["apiKey"]
    tools = _http_get(emulator, "/tool", key)
    (made,) = [t for t in tools if t.get("type") == "function"]
    assert made["function"] == {"name": "book", "description": "Book a visit at Acme"}
    (assistant,) = live(emulator, key)
    assert assistant["model"]["toolIds"] == [made["id"]]
    assert cli("plan", str(specs.root), "--detailed-exitcode").code == 0
    # an assistant template where a tool is wanted (or the other way round): one line
    tree = tmp_path / "offline"
    put(tree, "templates/booking.yaml", tool)
    wrong = offline_org("acme", {"inbound": uses("booking@1")})
    put(tree, "acme.yaml", wrong)
    problems = [str(p) for p in validate_tree(tree).problems]
    assert any(
        "spec.assistants.inbound.template: template booking@1: booking@1 makes tools, not "
        "assistants" in p
        for p in problems
    ), problems


def _http_get(emulator: str, path: str, key: str) -> list[dict[str, Any]]:
    import httpx

    with httpx.Client(base_url=emulator, timeout=10) as http:
        answer = http.get(path, headers={"Authorization": f"Bearer {key}"})
        answer.raise_for_status()
        listed: list[dict[str, Any]] = answer.json()
    return listed


def test_a_templates_folder_linked_outside_the_specs_is_refused_unread(
    tree: Path, tmp_path: Path, cli: Any
) -> None:
    """`templates/` may not lead out of the specs folder (as no spec file may): its templates
    and its lock are not read, whether the folder or one file is validated."""
    elsewhere = tmp_path / "elsewhere"
    put(elsewhere, "front-desk.yaml", template())
    (elsewhere / "templates.lock").write_text("not: [a lock")
    real = tree / "templates"
    for child in real.iterdir():
        child.unlink()
    real.rmdir()
    real.symlink_to(elsewhere, target_is_directory=True)
    for root in (tree, tree / "acme.yaml"):
        problems = [str(p) for p in validate_tree(root).problems]
        assert f"{real}: symlink to outside the specs directory: refused" in problems, problems
        assert sum("symlink" in p for p in problems) == 1, problems
        assert any("template front-desk@1: not found under templates/" in p for p in problems)
        assert not any("templates.lock" in p for p in problems)  # never opened
    check = cli("validate", str(tree))
    assert check.code == 1 and not (elsewhere / "templates.lock").read_text().startswith("#")


def test_an_unparsable_lock_is_one_line_and_an_empty_one_is_an_empty_lock(tree: Path) -> None:
    lock = tree / "templates" / "templates.lock"
    lock.write_text("not: [yaml\n")
    problems = [str(p) for p in validate_tree(tree).problems]
    assert [p for p in problems if p.startswith(str(lock))] == [
        f"{lock}: invalid YAML (line 2): expected ',' or ']', but got '<stream end>'"
    ]
    assert any("template front-desk@1: refused: see" in p for p in problems)
    lock.write_text("")
    result = validate_tree(tree)
    assert not result.problems and result.templates.lock_changed  # to be recorded
