"""PostgreSQL against SQLite on the order flow, in alternated rounds: the gap issue 20's
target names, measured so that the machine's drift falls on both databases alike.

    python -m bench.compare [--rounds R=4] [--latency L=1] [--orders N=300]
                            [--clients C=16] [--workers W=2]
                            [--postgres-url postgres://postgres@127.0.0.1:5432/test]
                            [--mode production|serve] [--json]

Each round runs `python -m bench.latency` once on each database, which one goes first
alternating from round to round. On this 2-core machine the same code swings by a quarter
from one minute to the next, so one run of each says little; the means of R alternated
rounds say more. Reports every run's orders/s, the machine's CPU per order (its busy
share * cores ÷ orders/s, whatever runs), the project's and its workers', and the PostgreSQL
server's own when it runs on this machine (the cores it takes from the others: the gap is
mostly there), then the means and PostgreSQL's gap to SQLite on them. See bench/README.md,
section "Latency".
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

from bench.common import (
    DEFAULT_POSTGRES_URL,
    BenchError,
    interrupt_on_sigterm,
    render_table,
    run_reporting,
)

PROG = "bench.compare"
DATABASES = ("sqlite", "postgres")


def log(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="runs per database")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per model call")
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--mode", choices=["production", "serve"], default="production")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.latency < 0:
        parser.error("--rounds must be at least 1 and --latency at least 0")
    return args


def latency_run(args: argparse.Namespace, database: str) -> dict[str, Any]:
    """One `bench.latency` run (its own processes and database), as its JSON reports it."""
    command = [
        sys.executable,
        "-m",
        "bench.latency",
        "--json",
        f"--database={database}",
        f"--postgres-url={args.postgres_url}",
        f"--latencies={args.latency:g}",
        f"--orders={args.orders}",
        f"--clients={args.clients}",
        f"--workers={args.workers}",
        f"--mode={args.mode}",
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, check=False, text=True)
    if done.returncode not in (0, 1):  # 1: it ran, and some order ended wrong
        raise BenchError(f"{' '.join(command[2:])} exited with status {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout)["results"][0]
    return result


def machine_ms_per_order(result: dict[str, Any]) -> float:
    cores = result["cpus"] or os.cpu_count() or 1
    return float(result["cpu_busy"] * cores * 1000 / result["orders_per_s"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for number in range(args.rounds):
        order = DATABASES if number % 2 == 0 else DATABASES[::-1]
        for database in order:
            log(f"round {number + 1} of {args.rounds}: {database}")
            result = latency_run(args, database)
            runs.append(
                {
                    "round": number + 1,
                    "database": database,
                    "orders_per_s": result["orders_per_s"],
                    "machine_cpu_ms_per_order": machine_ms_per_order(result),
                    "cpu_ms_per_order": result["cpu_ms_per_order"],
                    "wrong_count": result["wrong_count"],
                }
            )
    means = {
        database: {
            key: statistics.mean(r[key] for r in runs if r["database"] == database)
            for key in ("orders_per_s", "machine_cpu_ms_per_order")
        }
        for database in DATABASES
    }
    gap = means["postgres"]["orders_per_s"] / means["sqlite"]["orders_per_s"] - 1
    return {"latency_s": args.latency, "mode": args.mode, "runs": runs, "means": means, "gap": gap}


def render(report: dict[str, Any]) -> str:
    headers = [
        "round",
        "database",
        "orders/s",
        "machine CPU ms/order",
        "project",
        "workers",
        "postgres server",
    ]
    rows = [
        [
            str(r["round"]),
            r["database"],
            f"{r['orders_per_s']:.2f}",
            f"{r['machine_cpu_ms_per_order']:.1f}",
            f"{r['cpu_ms_per_order'].get('project', 0):.1f}",
            f"{r['cpu_ms_per_order'].get('workers', 0):.1f}",
            f"{server:.1f}" if (server := r["cpu_ms_per_order"].get("postgres server")) else "-",
        ]
        for r in report["runs"]
    ]
    rows += [
        [
            "mean",
            database,
            f"{m['orders_per_s']:.2f}",
            f"{m['machine_cpu_ms_per_order']:.1f}",
            "",
            "",
            "",
        ]
        for database, m in report["means"].items()
    ]
    return "\n".join(
        [
            f"model latency {report['latency_s']:g} s, {report['mode']} settings",
            render_table(headers, rows),
            f"PostgreSQL against SQLite, on the means: {report['gap'] * 100:+.1f} %",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()

    def work() -> int:
        report = run(args)
        print(json.dumps(report, sort_keys=True) if args.json else render(report))
        return 1 if any(r["wrong_count"] for r in report["runs"]) else 0

    return run_reporting(PROG, log, work)


if __name__ == "__main__":
    sys.exit(main())
