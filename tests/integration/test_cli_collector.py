"""`apply` and `plan` keep what is alive once the specs are read out of the garbage collector's
full passes while they run and while they write their plan (`reconciler.heap.settled`), and give
it back when they end."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from reconciler.cli import render as render_module
from reconciler.controller import run as run_module
from tests.helpers import SpecDir, org_doc


def test_the_run_is_settled_and_the_collector_sees_everything_after_it(
    cli: Any, specs: SpecDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gc.get_freeze_count() == 0
    frozen: dict[str, int] = {}
    apply, plan = run_module.Controller.apply, run_module.PlanController.plan

    written: list[int] = []
    render_text = render_module.render_text

    def counted_apply(self: Any, loaded: Any, *a: Any, **k: Any) -> Any:
        frozen.setdefault("apply", gc.get_freeze_count())
        settled.setdefault("apply", _out_of_full_passes(loaded.specs[0]))
        return apply(self, loaded, *a, **k)

    def counted_plan(self: Any, loaded: Any, *a: Any, **k: Any) -> Any:
        frozen.setdefault("plan", gc.get_freeze_count())
        settled.setdefault("plan", _out_of_full_passes(loaded.specs[0]))
        return plan(self, loaded, *a, **k)

    def counted_render(*a: Any, **k: Any) -> Any:
        written.append(gc.get_freeze_count())
        return render_text(*a, **k)

    settled: dict[str, bool] = {}
    monkeypatch.setattr(run_module.Controller, "apply", counted_apply)
    monkeypatch.setattr(run_module.PlanController, "plan", counted_plan)
    monkeypatch.setattr(render_module, "render_text", counted_render)
    specs.write(org_doc("acme"))
    applied = cli("apply", str(specs.root))
    assert applied.code == 0, applied.out + applied.err
    assert gc.get_freeze_count() == 0
    saved = specs.root.parent / "saved.plan"
    planned = cli("plan", str(specs.root), "--out", str(saved))
    assert planned.code == 0, planned.out + planned.err
    assert gc.get_freeze_count() == 0
    # during each run, everything alive once the specs were read was out of the full passes
    assert frozen.pop("apply") > 10_000 and frozen["plan"] > 10_000
    from_file = cli("apply", str(saved))  # a saved plan's apply too
    assert from_file.code == 0, from_file.out + from_file.err
    assert frozen["apply"] > 10_000 and gc.get_freeze_count() == 0
    # the specs just read were out of the full passes too, and so was the plan's writing
    assert settled == {"apply": True, "plan": True}
    assert len(written) == 3 and all(n > 10_000 for n in written)


def _out_of_full_passes(spec: Any) -> bool:
    """Whether a spec the run holds is frozen: no generation of the collector lists it."""
    return gc.is_tracked(spec) and not any(o is spec for o in gc.get_objects())


def test_a_run_that_fails_gives_everything_back_too(
    cli: Any, specs: SpecDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen: list[int] = []

    def broken(self: Any, *a: Any, **k: Any) -> Any:
        frozen.append(gc.get_freeze_count())
        raise RuntimeError("a bug in the run")

    monkeypatch.setattr(run_module.Controller, "apply", broken)
    specs.write(org_doc("acme"))
    failed = cli("apply", str(specs.root))
    assert failed.code != 0
    assert frozen and frozen[0] > 0
    assert gc.get_freeze_count() == 0


def test_a_freeze_made_before_the_run_is_left_as_it_was(cli: Any, specs: SpecDir) -> None:
    """A host that froze its objects (before a fork, say) keeps them frozen after a run in
    its process: `gc.unfreeze` is not counted, so the run does not call it."""
    specs.write(org_doc("acme"))
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        assert before > 0
        applied = cli("apply", str(specs.root))
        assert applied.code == 0, applied.out + applied.err
        assert gc.get_freeze_count() > before // 2  # still frozen (some died: freed)
    finally:
        gc.unfreeze()
