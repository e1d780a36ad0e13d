"""Skips that CI does not allow: a test that needs Chromium, PostgreSQL or Redis skips
where they are missing, except on CI (`CI=true`), where the missing part fails the run,
unless `ALLOW_SKIP` names it (`ALLOW_SKIP=chromium,postgres,redis`).

    from tests.support.requirements import skip_or_fail

    if not CHROMIUM.exists():
        skip_or_fail("chromium", "browser tests need Debian's chromium")

`scripts/test.sh` follows the same rule for its PostgreSQL and Redis passes.
"""

import os
from typing import NoReturn

import pytest

REQUIREMENTS = ("chromium", "postgres", "redis")


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def allowed_skips() -> set[str]:
    return {name.strip().lower() for name in os.environ.get("ALLOW_SKIP", "").split(",")}


def skip_or_fail(requirement: str, reason: str) -> NoReturn:
    """Skip the test for want of `requirement`, or fail it on CI unless it is allowed."""
    if requirement not in REQUIREMENTS:
        raise ValueError(f"unknown requirement {requirement!r} (known: {REQUIREMENTS})")
    if on_ci() and requirement not in allowed_skips():
        pytest.fail(
            f"{reason}. CI=true: a missing {requirement} fails the run instead of skipping "
            f"(ALLOW_SKIP={requirement} allows the skip)",
            pytrace=False,
        )
    pytest.skip(reason)
