"""Server sessions each `wrds-sync` command opens, measured on the embedded WRDS-shaped PostgreSQL.

For each command: the logins it made (`pg_stat_database.sessions`, each a potential Duo prompt on WRDS) and the
most sessions of the account open at once (client backends in `pg_stat_activity`: parallel query workers are
not sessions), with the default budget
(`WRDS_MAX_CONNECTIONS=3`) and with 1. Usage: python benchmarks/sessions_per_command.py
"""
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from wrds_sync_nb.demo import DEMO_ROLE, DemoSource

BIN = Path(sys.executable).parent / "wrds-sync"


def measure(src, db, data, args, budget):
    logins = lambda: src.execute("select sessions from pg_stat_database where datname = %s", (db,), "postgres")[0][0]
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            n = src.execute("select count(*) from pg_stat_activity where usename = %s and backend_type = 'client backend'", (DEMO_ROLE,), "postgres")[0][0]
            peak[0] = max(peak[0], n)

    cfg = src.config(db)
    env = {**os.environ, "WRDS_HOST": cfg.host, "WRDS_PORT": "5432", "WRDS_DATABASE": db, "WRDS_USERNAME": DEMO_ROLE,
           "WRDS_PASSWORD": "demo-password", "WRDS_SSLMODE": "disable", "WRDS_MAX_CONNECTIONS": str(budget),
           "WRDS_RATE_LIMIT_QUERIES_PER_MINUTE": "100000"}
    before = logins()
    t = threading.Thread(target=sample)
    t.start()
    r = subprocess.run([str(BIN), "--data-dir", str(data), *args], capture_output=True, text=True, env=env)
    stop.set()
    t.join()
    assert r.returncode == 0, r.stderr
    return logins() - before, peak[0]


def main():
    src = DemoSource(Path(tempfile.mkdtemp(prefix="wrds-sessions-")) / "pg").start()
    src.build("sessions", daily_rows=200_000, start_year=2021, end_year=2025)
    print("| command | WRDS_MAX_CONNECTIONS | logins | most open at once |\n|---|---|---|---|")
    for budget in (3, 1):
        data = Path(tempfile.mkdtemp(prefix="wrds-sessions-data-"))
        for args in (["full-sync", "--dataset", "crsp", "--start-year", "2021"], ["incremental", "--dataset", "crsp"],
                     ["incremental", "--dataset", "crsp", "--dry-run"], ["status"], ["verify", "--dataset", "crsp"],
                     ["datasets", "--check"]):
            logins, peak = measure(src, "sessions", data, args, budget)
            print(f"| `{' '.join(args)}` | {budget} | {logins} | {peak} |")
    src.stop()


if __name__ == "__main__":
    main()
