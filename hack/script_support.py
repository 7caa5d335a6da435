"""What the hack/ scripts share: importing a checker from PyPI on first use, and the summary.

The scripts use real third-party checkers (helm-python-sdk, kubernetes-validate, cel-python)
without asking the developer to set up anything by hand.
"""

import importlib
import subprocess
import sys


def pip_import(module, package, script):
    """Imports `module`, installing its PyPI `package` with pip first when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        print(f"{script}: installing {package} with pip", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", package],
            check=True,
            stdout=sys.stderr,
        )
        importlib.invalidate_caches()
        return importlib.import_module(module)


def report(passed, failures):
    """Prints each failure to stderr and the `N passed, M failed` line; the exit status."""
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0
