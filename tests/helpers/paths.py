"""Where the checkout, the shared datasets and the tests' own user code are."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Real datasets beside the checkout (CI: a fresh clone with ../shared next to it).
SHARED = REPO_ROOT.parent / "shared"
# A user's own modules (nets, listers, inner rules) that mamlpp must import only when named.
USER_CODE = REPO_ROOT / "tests" / "user_code"
