"""The test suite. Imported before its conftest, so the one setting below reaches every module
the suite loads and every process it starts.

Bytecode is written even where PYTHONDONTWRITEBYTECODE is set (as on the machine CI runs on):
without it, each pytest-xdist worker rewrote the asserts of every test module (9 s of CPU each) and every
`reconciler` child compiled the package again, in a suite that is CPU-bound on two cores. The
files go to the git-ignored `__pycache__` folders, as Python's default would put them.
"""

import os
import sys

if sys.dont_write_bytecode:
    sys.dont_write_bytecode = False
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
