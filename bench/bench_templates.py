"""Templates: what rendering adds to `validate`, and an offline plan of a rollout.

N org files (default 1,000), committed as sops writes them (credentials as ciphertext-shaped
values: `validate` and `diff --base` never decrypt), shaped as the examples are (Vapi and
Twilio credentials, two tools, a SIP number), each with an inbound assistant made from one of
5 templates (its own parameters, and an override of one list item and one field) and an
outbound assistant written in full. The same orgs with both assistants written in full, as
the templates render them, are the baseline. Timed, each several times (CPU of this process,
`time.process_time`; medians), in one run:

- `validate` of the templated tree against `validate` of the written-out tree;
- `render + plan, offline`: `offline_diff` of the templated tree against the same tree with
  every template moved to version 2 (a new greeting), which renders all N inbound assistants
  twice and plans each org, with the blast radius (checked: 5 lines, N orgs).

    python -m bench.bench_templates [--orgs 1000] [--runs 5] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.report import table, write_section
from reconciler.cli.render import rollouts
from reconciler.controller.offline import offline_diff
from reconciler.spec.loader import validate_tree, validate_with_documents

TEMPLATES = 5
ENC = "ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]"


def template(index: int, version: int) -> dict[str, Any]:
    greeting = "Thanks for calling ${practiceName}" + ("." if version == 1 else ", hello!")
    return {
        "apiVersion": "reconciler/v1",
        "kind": "AssistantTemplate",
        "metadata": {"name": f"design-{index}", "version": version},
        "parameters": {
            "practiceName": {"type": "string", "maxLength": 28},
            "voice": {"type": "enum", "values": ["burt", "rachel", "sarah"], "default": "burt"},
            "maxSeats": {"type": "integer", "default": 2},
        },
        "assistant": {
            "name": "${practiceName} Desk",
            "firstMessage": greeting,
            "model": {
                "provider": "openai",
                "model": "gpt-4o",
                "messages": [
                    {
                        "role": "system",
                        "content": f"Design {index}: you answer for ${{practiceName}}.",
                    },
                    {"role": "user", "content": "Seats: ${maxSeats}."},
                ],
            },
            "voice": {"provider": "11labs", "voiceId": "${voice}"},
            "endCallPhrases": ["goodbye", "bye"],
            "server": {"url": "https://hooks.example.com/vapi"},
        },
    }


def org(i: int, inbound: dict[str, Any]) -> dict[str, Any]:
    slug = f"org-{i:04d}"
    return {
        "apiVersion": "reconciler/v1",
        "kind": "Organization",
        "metadata": {"id": str(uuid.UUID(int=i + 1)), "slug": slug, "name": f"Org {i}"},
        "spec": {  # as the examples are: two providers, two tools, a number
            "credentials": {
                "vapi": {"apiKey": ENC, "webhookSecret": ENC},
                "twilio": {"accountSid": ENC, "authToken": ENC},
            },
            "assistants": {
                "inbound": inbound,
                "outbound": {
                    "name": f"{slug} reminders",
                    "firstMessage": "Hi, about your appointment.",
                    "model": {
                        "provider": "openai",
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "system", "content": "Confirm appointments."}],
                    },
                    "voice": {"provider": "11labs", "voiceId": "sarah"},
                    "maxDurationSeconds": 300,
                    "server": {"url": "https://hooks.example.com/vapi"},
                },
            },
            "tools": {
                "book_appointment": {
                    "type": "function",
                    "function": {
                        "description": "Book, move or cancel an appointment.",
                        "parameters": {
                            "type": "object",
                            "properties": {"patient": {"type": "string"}},
                            "required": ["patient"],
                        },
                    },
                    "server": {"url": "https://hooks.example.com/vapi"},
                },
                "end_call": {"type": "endCall"},
            },
            "phoneNumbers": [
                {"provider": "vapi", "sipUri": f"sip:{slug}@sip.vapi.ai", "assistant": "inbound"}
            ],
        },
        "sops": {"age": [], "mac": ENC, "version": "3.11.0"},
    }


def use(i: int, version: int) -> dict[str, Any]:
    return {
        "template": f"design-{i % TEMPLATES}@{version}",
        "with": {"practiceName": f"Practice {i}", "voice": ("rachel", "sarah")[i % 2]},
        "overrides": {
            "endCallPhrases": ["see you"],
            "model": {"messages": [{"role": "user", "content": f"We have {i % 5 + 1} seats."}]},
        },
    }


def write(root: Path, name: str, doc: dict[str, Any]) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def trees(tmp: Path, n: int) -> tuple[Path, Path, Path]:
    """The templated tree at version 1, the same at version 2, and the written-out tree."""
    v1, v2, full = tmp / "v1", tmp / "v2", tmp / "full"
    for t in range(TEMPLATES):
        for root in (v1, v2):
            write(root, f"templates/design-{t}.yaml", template(t, 1))
        write(v2, f"templates/design-{t}-2.yaml", template(t, 2))
    for i in range(n):
        write(v1, f"org-{i:04d}.yaml", org(i, use(i, 1)))
        write(v2, f"org-{i:04d}.yaml", org(i, use(i, 2)))
    rendered = validate_tree(v1)
    assert not rendered.problems, rendered.problems[:3]
    for spec in rendered.specs:  # as the templates render them, written in full
        i = int(spec.org.metadata.slug.split("-")[1])
        inbound = spec.org.spec.assistants.by_role()["inbound"].vapi_fields()
        write(full, f"org-{i:04d}.yaml", org(i, inbound))
    return v1, v2, full


def cpu(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orgs", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    n = args.orgs
    with tempfile.TemporaryDirectory() as tmp:
        v1, v2, full = trees(Path(tmp), n)

        def plan() -> None:
            report = offline_diff(validate_with_documents(v1), validate_with_documents(v2))
            moved = rollouts(report)
            assert len(moved) == TEMPLATES and sum(len(r.orgs) for r in moved) == n
            assert not report.failed and not report.problems

        written = cpu(lambda: validate_tree(full), args.runs)
        templated = cpu(lambda: validate_tree(v1), args.runs)
        offline = cpu(plan, args.runs)
        rows = [
            ["validate, assistants written in full", f"{written:.2f}", f"{written / n * 1e3:.2f}"],
            [
                f"validate, inbound from {TEMPLATES} templates",
                f"{templated:.2f}",
                f"{templated / n * 1e3:.2f}",
            ],
            [
                "render + plan offline (`diff --base`, every org moved to v2)",
                f"{offline:.2f}",
                f"{offline / n * 1e3:.2f}",
            ],
        ]
    body = table(["step", "cpu s", "cpu ms / org"], rows)
    body += (
        f"\n\n{n} orgs, medians of {args.runs} runs in one process, CPU time "
        f"(`time.process_time`). Rendering adds {templated / written - 1:+.0%} to `validate` "
        f"({(templated - written) / n * 1e3:.2f} ms per org: parse the template use, substitute, "
        "merge the overrides, check the result as an assistant). The offline plan validates "
        "both revisions (rendering every inbound assistant twice) and plans every org; its "
        f"blast radius reads {TEMPLATES} lines, {n} orgs."
    )
    print(body)
    if args.write:
        write_section(
            args.write,
            "bench_templates",
            f"Templates: {n} orgs over {TEMPLATES} templates (render + plan, offline)",
            f"python -m bench.bench_templates --orgs {n} --runs {args.runs}",
            body,
        )


if __name__ == "__main__":
    main()
