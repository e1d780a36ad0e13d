"""Exit 0 if PostgreSQL or Redis answers at a URL, starting a local one first when it is
installed but not running; exit 1 (with the reason on stderr) otherwise.

    python scripts/service_up.py postgres postgres://postgres@127.0.0.1:5432/test
    python scripts/service_up.py redis redis://127.0.0.1:6379/0
"""

import glob
import os
import shutil
import subprocess
import sys
import time


def postgres_answers(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url.replace("postgres://", "postgresql://", 1), connect_timeout=3).close()
        return True
    except psycopg.Error:
        return False


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.from_url(url, socket_connect_timeout=3).ping())
    except redis.RedisError:
        return False


def start_postgres() -> None:
    versions = [os.path.basename(p) for p in glob.glob("/etc/postgresql/*")]
    if versions and shutil.which("pg_ctlcluster"):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"],
            check=False,
            capture_output=True,
        )


def start_redis() -> None:
    if shutil.which("redis-server"):
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            check=False,
            capture_output=True,
        )


def main() -> int:
    kind, url = sys.argv[1], sys.argv[2]
    answers, start = {
        "postgres": (postgres_answers, start_postgres),
        "redis": (redis_answers, start_redis),
    }[kind]
    if answers(url):
        return 0
    start()
    for _ in range(20):
        if answers(url):
            print(f"started local {kind}", file=sys.stderr)
            return 0
        time.sleep(0.5)
    print(f"{kind} is not installed or does not answer at {url}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
