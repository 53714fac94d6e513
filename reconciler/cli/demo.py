"""`reconciler demo`: the whole flow on the examples, with nothing to set up.

Embedded Postgres in a temporary directory, the Vapi emulator in-process, the demo age key.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape

from reconciler.cli.render import render_text
from reconciler.config import Settings
from reconciler.errors import ConfigError
from reconciler.providers.runner import Verifier
from reconciler.providers.verify import Endpoints, http_client
from reconciler.secrets.crypto import MasterKey
from reconciler.server.runtime import Reading, runtime
from reconciler.spec import loader
from reconciler.state.db import temporary_embedded
from reconciler.state.verification import select_credentials
from reconciler.vapi.emulator import running_emulator
from reconciler.webhooks.resolver import BadSecret, WebhookResolver


def _verify(rt: Reading, settings: Settings, out: Console) -> bool:
    """`reconciler verify`, in-process, with every provider at the emulator's stubs."""
    with http_client() as http:
        verifier = Verifier(rt.pool, rt.key, Endpoints.from_settings(settings), http)
        credentials = select_credentials(rt.pool)
        results, _ = verifier.verify(credentials)
        verifier.record(results, credentials)
    width = max((len(r.slug) for r in results), default=0)
    for r in results:
        verdict = "ok" if r.ok else f"[red]error  {escape(r.check.reason or '')}[/red]"
        out.print(f"{escape(r.slug):<{width}}  {r.provider:<15}  {verdict}")
    out.print(f"verified {len(results)} credential(s), none of them with a third party")
    return all(r.ok for r in results)


def run_demo(path: Path, out: Console) -> int:
    agekey = path / "demo.agekey"
    if not agekey.exists():
        raise ConfigError(f"{agekey} not found: run the demo from the repository root")
    os.environ["SOPS_AGE_KEY_FILE"] = str(agekey)  # the demo key, whatever the user has set

    out.rule("1. validate (offline, no keys)")
    checked = loader.validate_tree(path)
    for problem in checked.problems:
        out.print(f"[red]{escape(str(problem))}[/red]")
    out.print(f"{len(checked.specs)} spec(s) valid")
    if checked.problems:
        return 1

    with (
        tempfile.TemporaryDirectory(prefix="reconciler-demo-") as tmp,
        temporary_embedded(Path(tmp)) as database,
        running_emulator(normalise=True) as url,  # server defaults as Vapi fills them
    ):
        settings = Settings(
            RECONCILER_DATABASE_URL=SecretStr(database),
            RECONCILER_DATA_DIR=Path(tmp),
            # Vapi and every other provider at the emulator: nothing reaches a third party
            RECONCILER_PROVIDER_STUBS=url,
            RECONCILER_MASTER_KEY=SecretStr(MasterKey.generate().to_b64()),
        )
        out.print(
            f"[dim]embedded Postgres in {tmp}; Vapi emulator and provider stubs at {url}[/dim]"
        )
        loaded = loader.load_tree(path)

        with runtime(settings, write=True) as rt:
            out.rule("2. plan")
            render_text(rt.controller.plan(loaded), out)
            out.rule("3. apply")
            applied = rt.controller.apply(loaded)
            render_text(applied, out, verb="Applied")
            out.rule("4. plan again: nothing to do")
            again = rt.controller.plan(loaded)
            render_text(again, out)

            out.rule("5. a Vapi webhook, resolved to its org")
            spec = loaded.specs[0].org
            row = rt.state.orgs.observe([str(spec.metadata.id)])[str(spec.metadata.id)]
            assistant_id = row["mappings"][0]["vapi_assistant_id"]
            body = json.dumps(
                {"message": {"type": "status-update", "call": {"assistantId": assistant_id}}}
            ).encode()
            vapi = spec.spec.credentials.vapi
            assert vapi is not None
            secret = vapi.webhook_secret.get_secret_value()
            resolver = WebhookResolver(rt.state, rt.key)
            hit = resolver.resolve({"x-vapi-secret": secret}, body)
            out.print(
                f"assistant {assistant_id} -> org [bold]{hit.slug}[/bold] ({hit.org_id}), "
                f"role {hit.role}, secret verified"
            )
            try:
                resolver.resolve({"x-vapi-secret": "forged"}, body)
            except BadSecret as exc:
                out.print(f"a forged secret is refused: {exc}")

            out.rule("6. verify every stored credential (against the local stubs)")
            verified = _verify(rt, settings, out)
        ok = applied.ok and not again.has_changes and again.ok and verified
        out.rule("done" if ok else "[red]demo failed[/red]")
        return 0 if ok else 1
