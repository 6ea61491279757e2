"""Test-only fault injection for subprocesses (see ``sitecustomize.py`` in this directory)."""

from __future__ import annotations

import os
import pathlib

FAULTS_DIR = pathlib.Path(__file__).resolve().parent
"""Directory holding the ``sitecustomize`` that arms the faults in a subprocess."""


def fault_env(env: dict[str, str], **faults: str) -> dict[str, str]:
    """Returns the environment additions that arm ``faults`` in a subprocess.

    Args:
        env: The subprocess's base environment (its ``PYTHONPATH`` is kept, after ours).
        **faults: Fault variables, e.g. ``CONVEYOR_FAULT_KILL_AFTER_COMMITS="25"``.

    Returns:
        ``PYTHONPATH`` with this directory first, plus the fault variables.
    """
    path = [str(FAULTS_DIR), *filter(None, [env.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path), **faults}
