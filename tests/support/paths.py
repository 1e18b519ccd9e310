"""Where things are: the repository root and the evaluation data (NAB, SKAB), in one place.

The data sets are not in the repository: they sit in a ``shared/data`` folder next to the
checkout (``/work/shared/data`` for ``/work/main`` and for the worktrees under ``/work/wt``),
found by walking up from the repository root. Tests that read them are marked
:data:`requires_nab`: without the data they are skipped, saying where the data was looked for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _data_root() -> Path:
    """The first ``shared/data`` folder at or above the repository root (the nearest if none)."""
    for folder in (REPO_ROOT, *REPO_ROOT.parents):
        if (folder / "shared" / "data").is_dir():
            return folder / "shared" / "data"
    return REPO_ROOT.parent / "shared" / "data"


DATA_DIR = _data_root()
NAB_DIR = DATA_DIR / "nab"
SKAB_DIR = DATA_DIR / "skab"

requires_nab = pytest.mark.skipif(
    not (NAB_DIR / "combined_windows.json").is_file(),
    reason=f"NAB development subset not found at {NAB_DIR}",
)
