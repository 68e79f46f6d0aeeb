"""Throughput over a WRDS-like link: a throttling TCP proxy in front of the embedded PostgreSQL.

WRDS users report 30-110k rows/s per stream and that parallel streams under the role's connection limit pay
(see ../shared/WRDS.md). This models that link: a proxy started here gives each TCP connection its own bandwidth
cap (64 Mbit/s by default) and one-way latency (15 ms), and forwards it to the server's Unix socket, where the
demo account (role connection limit 7, as on WRDS) logs in with its password. On one CRSP-daily-shaped table
(19 columns, 600,000 rows over 2023-2025 by default), each path runs in its own process, so its peak RSS is its
own, and a thread polls `pg_stat_activity` for the largest number of the account's sessions seen:

- `pandas.read_sql` then `to_parquet` (what users of the official `wrds` package do), one session;
- DuckDB's postgres extension, `COPY (SELECT ...) TO parquet`, with threads=1 and threads=3 (`db2pq`'s setting);
- `full_sync` with WRDS_MAX_CONNECTIONS=1, the default (3) and 7 (a WRDS role's whole limit).

Prints rows/s, seconds, peak RSS and sessions per path, the CPU seconds the client, the server and the proxy used
(and so how many of the machine's cores were busy), and the ratios the throughput issue sets targets for.
Never asserted anywhere: these machines are noisy. Usage:
    python benchmarks/wrds_link.py [--rows N] [--mbit 64] [--latency-ms 15]
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

YEARS = (2023, 2025)


# --- the link: one asyncio process; per connection and direction, a latency and a bandwidth cap -------------------
async def pump(reader, writer, rate: float, delay: float) -> None:
    """Copy `reader` to `writer`, each chunk delivered `delay` s after it was read and no faster than `rate` B/s."""
    queue: asyncio.Queue = asyncio.Queue()

    async def read():
        while data := await reader.read(65536):
            await queue.put((time.monotonic(), data))
        await queue.put((time.monotonic(), b""))

    async def write():
        free = 0.0  # when the link is free to send again
        while True:
            t, data = await queue.get()
            start = max(time.monotonic(), t + delay, free)
            await asyncio.sleep(max(0.0, start - time.monotonic()))
            if not data:
                break
            writer.write(data)
            await writer.drain()
            free = start + len(data) / rate
        writer.close()

    await asyncio.gather(read(), write(), return_exceptions=True)


async def serve(socket_path: str, rate: float, delay: float) -> None:
    async def handle(creader, cwriter):
        sreader, swriter = await asyncio.open_unix_connection(socket_path)
        await asyncio.gather(pump(creader, swriter, rate, delay), pump(sreader, cwriter, rate, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


# --- each path, in its own process -------------------------------------------------------------------------------
CHILD = r'''
import json, os, resource, sys, time
from pathlib import Path
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
mode, out = sys.argv[1:3]
host, port, db, user, pw = (os.environ[k] for k in ("WRDS_HOST", "WRDS_PORT", "WRDS_DATABASE", "WRDS_USERNAME", "WRDS_PASSWORD"))
years, rows = (2023, 2025), 0
src = f"select * from crsp.dsf_v2 where dlycaldt >= '{years[0]}-01-01' and dlycaldt < '{years[1] + 1}-01-01'"
if mode == "pandas":
    import pandas as pd, sqlalchemy as sa
    eng = sa.create_engine("postgresql+psycopg2://", connect_args=dict(host=host, port=port, user=user, password=pw, dbname=db))
    t0, cpu0 = time.perf_counter(), cpu()
    df = pd.read_sql(sa.text(src), eng)
    df.to_parquet(Path(out) / "all.parquet", compression="zstd")
    rows = len(df)
elif mode.startswith("duckdb"):
    import duckdb, duckdb_extension_postgres_scanner as ext
    con = duckdb.connect()
    con.load_extension(str(next(Path(ext.__file__).parent.glob("extensions/*/postgres_scanner.duckdb_extension"))))
    con.execute(f"set threads = {mode[-1]}")
    con.execute(f"attach 'host={host} port={port} dbname={db} user={user} password={pw}' as pg (type postgres, read_only)")
    t0, cpu0 = time.perf_counter(), cpu()
    con.execute(f"copy (select * from pg.crsp.dsf_v2 where dlycaldt >= date '{years[0]}-01-01' and dlycaldt < date '{years[1] + 1}-01-01') "
                f"to '{out}/all.parquet' (format parquet, compression zstd)")
    rows = con.execute(f"select count(*) from '{out}/all.parquet'").fetchone()[0]
else:
    from wrds_sync_nb.client import WRDSClient
    from wrds_sync_nb.config import load_config
    from wrds_sync_nb.datasets import DatasetRegistry
    from wrds_sync_nb.sync import SyncManager
    client = WRDSClient(load_config(max_connections=int(mode.split("_")[-1])))
    t0, cpu0 = time.perf_counter(), cpu()
    m = SyncManager(client, out, registry=DatasetRegistry.load()).full_sync("crsp", *years, tables=["daily"])
    rows = m.tables["daily"].rows
secs = time.perf_counter() - t0
print(json.dumps({"mode": mode, "rows": rows, "seconds": secs, "client_cpu": cpu() - cpu0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def server_cpu(src) -> float:
    """CPU seconds of the PostgreSQL server so far: the postmaster, its live backends and those that have exited."""
    import psutil
    post = next(p for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] == "postgres" and str(src.root) in " ".join(p.info["cmdline"] or []))
    t = post.cpu_times()
    return t.user + t.system + t.children_user + t.children_system + sum(
        c.cpu_times().user + c.cpu_times().system for c in post.children())


def proxy_cpu(pid: int) -> float:
    import psutil
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def run_child(mode: str, env: dict, root: Path, src, user: str, proxy_pid: int) -> dict:
    """One path in its own process, with the most sessions of `user` seen while it ran, and the CPU each party used."""
    out = Path(tempfile.mkdtemp(dir=root, prefix=mode))
    before = (server_cpu(src), proxy_cpu(proxy_pid))
    seen, stop = [0], threading.Event()

    def poll():
        while not stop.is_set():
            n = src.execute("select count(*) from pg_stat_activity where usename = %s and backend_type = 'client backend'",
                            (user,), database="postgres")[0][0]
            seen[0] = max(seen[0], n)
            stop.wait(0.05)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, mode, str(out)], capture_output=True, text=True, env=env, timeout=3600)
    finally:
        stop.set()
        t.join()
    if r.returncode != 0:
        raise SystemExit(f"{mode} failed: {r.stderr[-2000:]}")
    while src.execute("select count(*) from pg_stat_activity where usename = %s", (user,), database="postgres")[0][0]:
        time.sleep(0.05)  # the child's backends end and are reaped: their CPU is then counted
    got = json.loads(r.stdout.strip().splitlines()[-1])
    return {**got, "sessions": seen[0], "server_cpu": server_cpu(src) - before[0], "proxy_cpu": proxy_cpu(proxy_pid) - before[1]}


CATALOGUE_SQL = """do $$ begin for i in 1..%s loop
  execute format('create schema lib%%s', i);
  execute format('grant usage on schema lib%%s to public', i);
  for j in 1..20 loop
    execute format('create table lib%%s.t%%s (gvkey varchar(6), datadate date, x numeric(10,2), y float8, z text)', i, j);
  end loop;
  for j in 1..10 loop execute format('create view lib%%s.v%%s as select * from lib%%s.t%%s', i, j, i, j); end loop;
  commit;
end loop; end $$"""


def add_catalogue(src, libraries: int) -> None:
    """WRDS's catalogue size: `libraries` more schemas of 20 tables and 10 views each (1,000: about 70,000
    pg_class and 60,000 pg_type rows; WRDS has about 118,600 relations in 1,100 schemas)."""
    conn = src.connect("link")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(CATALOGUE_SQL % libraries)
    conn.close()


def setup_seconds(env: dict) -> dict[str, float]:
    """Seconds to open one ADBC session over the modelled link, with the driver's type resolver reading the
    server's catalogue (its default: what the sync did before) and with its built-in types (what it does now)."""
    import adbc_driver_postgresql.dbapi as adbc
    uri = (f"postgresql://{env['WRDS_USERNAME']}:{env['WRDS_PASSWORD']}@127.0.0.1:{env['WRDS_PORT']}/"
           f"{env['WRDS_DATABASE']}?sslmode=disable")
    out = {}
    for mode in ("server", "builtin"):
        t0 = time.monotonic()
        conn = adbc.connect(uri, db_kwargs={"adbc.postgresql.type_resolver_mode": mode})
        out[mode] = time.monotonic() - t0
        conn.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=600_000)
    ap.add_argument("--mbit", type=float, default=64.0, help="bandwidth cap per connection, Mbit/s")
    ap.add_argument("--latency-ms", type=float, default=15.0, help="one-way latency per connection")
    ap.add_argument("--paths", default="pandas,duckdb_1,duckdb_3,full_sync_1,full_sync_3,full_sync_7")
    ap.add_argument("--catalogue", type=int, default=1000,
                    help="extra libraries of 30 relations each on the server (WRDS-sized: 1000; 0: a small catalogue)")
    a = ap.parse_args()
    from wrds_sync_nb.demo import DEMO_PASSWORD, DEMO_ROLE, DemoSource
    root = Path(tempfile.mkdtemp(prefix="wrds-link-"))
    src = DemoSource(root / "pg").start()
    counts = src.build("link", daily_rows=a.rows, start_year=YEARS[0], end_year=YEARS[1], tables=["crsp.dsf_v2"])
    src.execute("create index on crsp_a_stock.dsf_v2 (permno, dlycaldt)", database="link")
    src.execute("analyze crsp_a_stock.dsf_v2", database="link")
    if a.catalogue: add_catalogue(src, a.catalogue)
    relations = src.execute("select count(*) from pg_class", database="link")[0][0]
    proxy = subprocess.Popen([sys.executable, __file__, "--proxy", f"{src.socket_dir}/.s.PGSQL.5432", str(a.mbit * 1e6 / 8),
                              str(a.latency_ms / 1000)], stdout=subprocess.PIPE, text=True)
    port = proxy.stdout.readline().strip()
    env = {**os.environ, "WRDS_HOST": "127.0.0.1", "WRDS_PORT": port, "WRDS_DATABASE": "link", "WRDS_USERNAME": DEMO_ROLE,
           "WRDS_PASSWORD": DEMO_PASSWORD, "WRDS_SSLMODE": "disable"}
    limit = src.execute("select rolconnlimit from pg_roles where rolname = %s", (DEMO_ROLE,), database="postgres")[0][0]
    print(f"source: {counts['crsp.dsf_v2']:,} rows x 19 columns in crsp.dsf_v2 ({YEARS[0]}-{YEARS[1]}); link: {a.mbit:g} Mbit/s "
          f"and {a.latency_ms:g} ms per connection; role connection limit {limit}; catalogue {relations:,} pg_class rows")
    setup = setup_seconds(env)
    print(f"opening one ADBC session: {setup['server']:.3f} s with the server's type catalogue (before), "
          f"{setup['builtin']:.3f} s with built-in types (now)")
    try:
        res = {p: run_child(p, env, root, src, DEMO_ROLE, proxy.pid) for p in a.paths.split(",")}
    finally:
        proxy.terminate()
        src.stop()
    print(f"{'path':<14} {'rows':>9} {'seconds':>8} {'rows/s':>9} {'sessions':>8} {'peak RSS MB':>11} "
          f"{'CPU s: client':>13} {'server':>7} {'proxy':>6} {'cores busy':>10}")
    for p, g in res.items():
        busy = (g["client_cpu"] + g["server_cpu"] + g["proxy_cpu"]) / g["seconds"]
        print(f"{p:<14} {g['rows']:>9,} {g['seconds']:>8.2f} {g['rows'] / g['seconds']:>9,.0f} {g['sessions']:>8} {g['peak_rss_mb']:>11.0f} "
              f"{g['client_cpu']:>13.1f} {g['server_cpu']:>7.1f} {g['proxy_cpu']:>6.1f} {busy:>10.2f}")
    rate = {p: g["rows"] / g["seconds"] for p, g in res.items()}
    if {"full_sync_7", "duckdb_3", "full_sync_1", "full_sync_3"} <= set(rate):
        print(f"full_sync (7 connections) / DuckDB threads=3: {rate['full_sync_7'] / rate['duckdb_3']:.2f}x (target >= 1.7x)")
        print(f"full_sync 7 / 1 connection: {rate['full_sync_7'] / rate['full_sync_1']:.2f}x (target >= 5x)")
        print(f"full_sync default (3) / 1 connection: {rate['full_sync_3'] / rate['full_sync_1']:.2f}x (target >= 2x)")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--proxy":
        asyncio.run(serve(sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
    else:
        main()
