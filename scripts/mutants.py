"""Break the service on purpose, one named break at a time, and check that the tests
covering it go red (issue 23): `bash scripts/mutants.sh [NAME ...]`.

Each break is data (`Break`): a file, the exact text to replace (it must occur exactly
once: code that drifted fails the script loudly, naming the break to update), its
replacement, and the fast tests that must catch it. The breaks are applied to a scratch
copy of the working tree (tracked and untracked files, under a temporary directory), so
the tree itself is never touched. First the covering tests run on the unbroken copy
(they must pass), then once per break. A break is "passed" when its tests fail.

Last line: `N passed, N failed` (failed: breaks the suite misses). Exit status 0 only
when every break is caught.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Break:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, `-k` expressions


BREAKS: list[Break] = [
    Break(
        "payment table: refunded → captured allowed",
        "orders/services/payments.py",
        "    _P.REFUNDED: frozenset({_P.DISPUTED}),\n",
        "    _P.REFUNDED: frozenset({_P.DISPUTED, _P.CAPTURED}),\n",
        ("tests/orders/test_payment_status.py",),
    ),
    Break(
        "payment table: canceled → captured allowed",
        "orders/services/payments.py",
        "    _P.CANCELED: frozenset(),\n",
        "    _P.CANCELED: frozenset({_P.CAPTURED}),\n",
        ("tests/orders/test_payment_status.py",),
    ),
    Break(
        "worker stop: no last-resort lease_release for runs inside a step",
        "workflows/worker/runtime.py",
        "run_id for token, run_id in self.keeper.held.items() if lease_release(run_id, token)",
        "run_id for token, run_id in self.keeper.held.items() if False",
        ("tests/workflows/test_lease_sync.py",),
    ),
    Break(
        "sync step: lease renewed only where the step runs (inline)",
        "workflows/engine/runtime.py",
        "self.keeper = LeaseKeeper(None if in_transaction else _renew_in_a_thread)",
        "self.keeper = LeaseKeeper()",
        ("tests/workflows/test_lease_sync.py",),
    ),
    Break(
        "sync step: lease renewed on the worker's sync pool",
        "workflows/worker/runtime.py",
        "self.keeper = LeaseKeeper(self._renew_leases)",
        "self.keeper = LeaseKeeper()",
        ("tests/workflows/test_lease_sync.py",),
    ),
    Break(
        "model call: a 429 raised at once instead of waited out",
        "workflows/agents/agent.py",
        "if exc.retry_after is None or time.monotonic() >= give_up_at:",
        "if True:",
        ("tests/workflows/agents/test_rate_limits.py",),
    ),
    Break(
        "model budget: never stops the agent",
        "workflows/engine/pricing.py",
        "if budget_usd is not None and spent_microusd >= budget_usd * MICRO:",
        "if False:",
        ("tests/workflows/agents/test_rate_limits.py", "tests/workflows/agents/test_pricing.py"),
    ),
    Break(
        "fork: the charge key differs from the original order's",
        "orders/services/payments.py",
        'idempotency_key=payment_key(operation="charge", order_pk=order.pk),',
        'idempotency_key=payment_key(operation="charge", order_pk=order.pk) + f":{order.run_id}",',
        ("tests/orders/test_fork.py", "-k", "charge"),
    ),
    Break(
        "double charge: the charge sent without its idempotency key",
        "orders/payments.py",
        'options: Any = {"idempotency_key": key}',
        "options: Any = {}",
        (
            "tests/orders/test_payment_faults.py",
            "tests/orders/test_charge_round_trips.py",
            "tests/orders/test_fork.py",
            "-k",
            "charge",
        ),
    ),
    Break(
        "double charge: no lookup of what a lost answer created",
        "orders/payments.py",
        "            if outcome_unknown or attempt > 1:\n",
        "            if False:\n",
        (
            "tests/orders/test_payment_faults.py",
            "tests/orders/test_charge_round_trips.py",
            "-k",
            "charge and not qcluster",
        ),
    ),
    Break(
        "model cap: a slot another holder holds is taken anyway",
        "workflows/engine/limits.py",
        'free = Q(holder="") | Q(expires_at__lt=now) | Q(holder=holder)',
        "free = Q()",
        ("tests/workflows/test_limits.py",),
    ),
    Break(
        "email tool: the confirmation is not sent",
        "orders/notifications.py",
        "        message.send(fail_silently=False)\n"
        "    except Exception as exc:\n"
        "        # How far it got decides",
        "        pass\n    except Exception as exc:\n        # How far it got decides",
        ("tests/orders/test_email_faults.py", "tests/orders/test_flow_simulated.py"),
    ),
    Break(
        "email tool: the confirmation is sent twice",
        "orders/notifications.py",
        "        message.send(fail_silently=False)\n"
        "    except Exception as exc:\n"
        "        # How far it got decides",
        "        message.send(fail_silently=False)\n"
        "        message.send(fail_silently=False)\n"
        "    except Exception as exc:\n"
        "        # How far it got decides",
        ("tests/orders/test_email_faults.py", "tests/orders/test_flow_simulated.py"),
    ),
]


# Fast tests only (no qcluster subprocess, no outage drill); stop at the first failure;
# one test database, made by the baseline run and reused by every break (no break
# touches a model).
PYTEST_OPTIONS = (
    "-x",
    "-q",
    "-p",
    "no:cacheprovider",
    "--reuse-db",
    "-m",
    "not qcluster and not outage",
)


class DriftError(Exception):
    """A break's `old` text no longer occurs exactly once: the code moved on."""


def scratch_copy(into: Path) -> None:
    """The working tree as it is (tracked and untracked, not ignored files)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        source = ROOT / os.fsdecode(raw)
        if source.is_file() and not source.is_symlink():
            target = into / os.fsdecode(raw)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def check_all_apply(breaks: list[Break], tree: Path) -> None:
    drifted = []
    for b in breaks:
        text = (tree / b.file).read_text()
        if text.count(b.old) != 1:
            found = text.count(b.old)
            drifted.append(f"  {b.name!r}: its old text occurs {found} times in {b.file}")
    if drifted:
        raise DriftError(
            "code drifted: update these breaks in scripts/mutants.py\n" + "\n".join(drifted)
        )


def pytest(
    tree: Path, args: tuple[str, ...], *, db: str, timeout: float, log: Path
) -> tuple[int, float]:
    env = {
        **os.environ,
        "TEST_SQLITE_PATH": db,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *PYTEST_OPTIONS, *args],
            cwd=tree,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
        code = done.returncode
    except subprocess.TimeoutExpired:
        code = -1
    return code, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only the breaks whose name contains one")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per pytest run")
    options = parser.parse_args()
    breaks = [b for b in BREAKS if not options.names or any(n in b.name for n in options.names)]
    if not breaks:
        parser.error("no break matches")

    with tempfile.TemporaryDirectory(prefix="mutants-") as scratch:
        tree = Path(scratch) / "tree"
        scratch_copy(tree)
        (tree / ".venv").symlink_to(ROOT / ".venv")
        db = str(Path(scratch) / "test.sqlite3")
        try:
            check_all_apply(breaks, tree)
        except DriftError as exc:
            print(exc, file=sys.stderr)
            return 2

        covering: list[str] = sorted({t for b in breaks for t in b.tests if t.endswith(".py")})
        log = Path(scratch) / "pytest.log"
        code, took = pytest(tree, tuple(covering), db=db, timeout=options.timeout * 2, log=log)
        if code != 0:
            print(log.read_text(errors="replace")[-3000:])
            print(f"the covering tests fail without any break (exit {code}): fix them first")
            return 2
        print(f"baseline: {len(covering)} test modules pass unbroken ({took:.0f} s)")

        caught = missed = 0
        for b in breaks:
            path = tree / b.file
            original = path.read_text()
            path.write_text(original.replace(b.old, b.new, 1))
            try:
                code, took = pytest(tree, b.tests, db=db, timeout=options.timeout, log=log)
            finally:
                path.write_text(original)
            if code == 1:
                caught += 1
                print(f"CAUGHT  {b.name}  ({took:.0f} s)")
            elif code == 0:
                missed += 1
                print(f"MISSED  {b.name}: {' '.join(b.tests)} stayed green ({took:.0f} s)")
            else:
                missed += 1
                why = "timed out" if code == -1 else f"pytest exit {code}"
                print(log.read_text(errors="replace")[-2000:])
                print(f"ERROR   {b.name}: {why} ({took:.0f} s)")
        print(f"{caught} passed, {missed} failed")
        return 0 if missed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
