"""Reading and decrypting specs leaves no reference cycle: nothing of a file (least of all
the cipher that holds its data key) waits for the collector once the file is done."""

from __future__ import annotations

import gc
from typing import Any

from reconciler.spec.loader import load_tree
from tests.helpers import SpecDir, org_doc

_OURS = ("reconciler", "cryptography", "pyrage")


def _ours(obj: Any) -> bool:
    if type(obj).__name__ == "cell":
        try:
            obj = obj.cell_contents
        except ValueError:  # an empty cell
            return False
    module = getattr(obj, "__module__", None) if callable(obj) else None
    module = module or type(obj).__module__
    return isinstance(module, str) and module.startswith(_OURS)


def test_reading_specs_leaves_nothing_for_the_collector(specs: SpecDir) -> None:
    for slug in ("acme", "globex"):
        specs.write(org_doc(slug))
    load_tree(specs.root)  # imports and caches made once
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept in gc.garbage
    try:
        result = load_tree(specs.root)
        gc.collect()
        left = [repr(o)[:80] for o in gc.garbage if _ours(o)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert result.problems == [] and len(result.specs) == 2
    assert left == []
