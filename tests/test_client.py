"""WRDSClient and credentials against a real PostgreSQL (spec tests 15-19, plus)."""
import socket
import subprocess
import sys
import textwrap
import threading
import time

import keyring
import keyring.backend
import pyarrow as pa
import pytest
from pydantic import SecretStr

from wrds_sync_nb import events
from wrds_sync_nb.client import WRDSClient
from wrds_sync_nb.config import WRDSConfig, libpq_uri, resolve_credentials
from wrds_sync_nb.errors import CredentialsError, QueryError, QueryTimeoutError, WRDSConnectionError


class QuickRetry(WRDSClient):
    RETRY_INITIAL_WAIT = 0.05
    RETRY_MAX_WAIT = 0.2


def run_in_threads(fn, n):
    """Run `fn` in `n` threads at once and wait for all of them."""
    ts = [threading.Thread(target=fn) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def backends(demo, database, app):
    return demo.execute("select pid, state, query from pg_stat_activity where datname = %s and application_name = %s",
                        (database, app), database="postgres")


def test_15_sessions_are_bounded_by_the_budget_and_reused(demo, wrds_db):
    cfg = demo.config(wrds_db, application_name="pooltest", max_connections=3)
    sessions_before = demo.execute("select sessions from pg_stat_database where datname = %s", (wrds_db,), "postgres")[0][0]
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], len(backends(demo, wrds_db, "pooltest")))

    with WRDSClient(cfg) as c:
        sampler = threading.Thread(target=sample)
        sampler.start()
        errors = []

        def work():
            try:
                for _ in range(10):
                    assert c.execute_query("select pg_sleep(0.02), 1 as one")["one"].to_list() == [1]
            except Exception as e:  # surfaced below
                errors.append(e)

        run_in_threads(work, 8)
        stop.set()
        sampler.join()
        assert errors == [] and c.pool.peak == 3
    sessions = demo.execute("select sessions from pg_stat_database where datname = %s", (wrds_db,), "postgres")[0][0]
    assert 2 <= peak[0] <= 3
    # 80 queries from 8 threads reuse the budget's 3 sessions; the driver reads its type catalogue once, on a
    # login of its own, when the first session opens
    assert sessions - sessions_before <= 3 + 1
    assert backends(demo, wrds_db, "pooltest") == []  # close() returned every connection


def test_16_rate_limit_holds_qpm_over_a_burst(demo, wrds_db):
    cfg = demo.config(wrds_db, rate_limit_queries_per_minute=3, rate_limit_window_seconds=1.0)
    stamps = []
    with WRDSClient(cfg) as c:
        def burst():
            for _ in range(3):
                stamps.append(c.execute_query("select extract(epoch from clock_timestamp()) as t")["t"][0])
        run_in_threads(burst, 3)
    stamps.sort()
    assert len(stamps) == 9
    # the server saw the burst in windows: any 4 consecutive queries span (almost) a full second, so never more
    # than 3 in a window (150 ms of slack for the time between the limiter and the server's clock)
    spans = [stamps[i + 3] - stamps[i] for i in range(len(stamps) - 3)]
    assert min(spans) >= 0.85, spans
    assert stamps[-1] - stamps[0] >= 1.85  # 9 queries at 3 per second need two full windows


def test_17_timeout_cancels_on_server(demo, wrds_db):
    cfg = demo.config(wrds_db, query_timeout_seconds=0.5, application_name="timeouttest")
    with QuickRetry(cfg) as c:
        t0 = time.monotonic()
        with pytest.raises(QueryTimeoutError, match="0.5s statement timeout"):
            c.execute_query("select pg_sleep(30)")
        with pytest.raises(QueryTimeoutError):
            list(c.iter_batches("select pg_sleep(30)"))
        assert time.monotonic() - t0 < 10, "a timeout is not retried"
        assert [b for b in backends(demo, wrds_db, "timeouttest") if "pg_sleep" in b[2] and b[1] == "active"] == []
        assert c.execute_query("select 1 as x")["x"][0] == 1  # the pool is usable afterwards


def _terminate_when_running(demo, database, app, needle):
    """Kill the backend running `needle` as soon as it is seen (polls pg_stat_activity: a condition, not a guess)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid, state, query in backends(demo, database, app):
            if needle in query and state == "active":
                demo.execute("select pg_terminate_backend(%s)", (pid,), database="postgres")
                return pid
    raise AssertionError("query never started")


@pytest.mark.parametrize("path", ["execute_query", "iter_batches"])
def test_18_transient_error_is_retried(demo, wrds_db, path):
    cfg = demo.config(wrds_db, application_name=f"retry{path}")
    out = {}
    with QuickRetry(cfg) as c:
        def run():
            try:
                if path == "execute_query":
                    out["v"] = c.execute_query("select pg_sleep(0.8) as s, 42 as y")["y"][0]
                else:
                    out["v"] = pa.Table.from_batches(list(c.iter_batches("select pg_sleep(0.8) as s, 42 as y")))["y"][0].as_py()
            except Exception as e:
                out["e"] = e
        with events.capture_events() as got:
            t = threading.Thread(target=run)
            t.start()
            _terminate_when_running(demo, wrds_db, f"retry{path}", "pg_sleep(0.8)")
            t.join()
    assert out == {"v": 42}
    assert [e["attempt"] for e in got if e["event"] == events.QUERY_RETRY] == [1]


def test_awkward_password_survives_both_drivers(demo, wrds_db, password_role):
    cfg = demo.config(wrds_db, username="wrds_user", password=SecretStr(password_role))
    with WRDSClient(cfg) as c:
        assert c.execute_query("select current_user as u")["u"][0] == "wrds_user"
        assert pa.Table.from_batches(list(c.iter_batches("select current_user as u")))["u"][0].as_py() == "wrds_user"
    assert password_role not in repr(cfg) + str(cfg) + repr(c)


def test_authentication_failure_is_not_retried(demo, wrds_db, password_role):
    cfg = demo.config(wrds_db, username="wrds_user", password=SecretStr("wrong"))
    with events.capture_events() as got:
        t0 = time.monotonic()
        with pytest.raises(CredentialsError) as e:
            QuickRetry(cfg).connect()
    assert "rejected the credentials of user 'wrds_user'" in str(e.value) and "\n" not in str(e.value)
    assert [x for x in got if x["event"] == events.QUERY_RETRY] == [] and time.monotonic() - t0 < 5


def test_syntax_error_and_missing_table_fail_at_once(demo, wrds_db):
    with QuickRetry(demo.config(wrds_db)) as c, events.capture_events() as got:
        with pytest.raises(QueryError, match="syntax error"):
            c.execute_query("selec 1")
        with pytest.raises(QueryError, match="does not exist on"):
            c.get_table_info("crsp", "nope")
    assert [x for x in got if x["event"] == events.QUERY_RETRY] == []


def test_get_table_info_reads_comments_and_estimates(demo, wrds_db):
    with WRDSClient(demo.config(wrds_db)) as c:
        dsf = c.get_table_info("crsp", "dsf_v2")
        funda = c.get_table_info("comp", "funda")
    assert dsf["last_updated"] == "2026-02-06" and dsf["comment"].endswith("(Updated 2026-02-06)")
    assert funda["last_updated"] == "2026-02-06T10:30:00"
    cols = {col["name"]: col for col in dsf["columns"]}
    assert cols["permno"]["type"] == "integer" and cols["dlyret"]["comment"] == "Daily Total Return"
    assert dsf["kind"] == "v" and dsf["approx_rows"] > 0  # a view, as on WRDS: the estimate of the table under it
    exact = demo.execute("select count(*) from comp.funda", database=wrds_db)[0][0]
    assert funda["kind"] == "r" and abs(funda["approx_rows"] - exact) <= exact * 0.1


@pytest.mark.parametrize("mode", ["refused", "silent"])
def test_unreachable_host_fails_in_bounded_time(mode):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    if mode == "silent":
        srv.listen(8)  # accepts TCP but never speaks: only connect_timeout ends the wait
    else:
        srv.close()
    cfg = WRDSConfig(username="u", password=SecretStr("secretpw"), host="127.0.0.1", port=port,
                     connect_timeout_seconds=1, sslmode="disable")
    t0 = time.monotonic()
    with pytest.raises(WRDSConnectionError) as e:
        QuickRetry(cfg).connect()
    assert time.monotonic() - t0 < 15
    assert f"cannot reach WRDS at 127.0.0.1:{port}/wrds" in str(e.value) and "secretpw" not in str(e.value)
    srv.close()


def test_19_credentials_env_pgpass_keyring_and_none(tmp_path, monkeypatch):
    for k in ("WRDS_PASSWORD", "WRDS_USERNAME", "WRDS_USER", "WRDS_ID", "PGUSER"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))

    class MemoryKeyring(keyring.backend.KeyringBackend):
        priority = 1
        store = {}

        def get_password(self, service, username):
            return self.store.get((service, username))

        def set_password(self, service, username, password):
            self.store[(service, username)] = password

        def delete_password(self, service, username):
            self.store.pop((service, username), None)

    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    try:
        monkeypatch.setenv("WRDS_ID", "ann")  # the db2pq/tidyfinance spelling
        with pytest.raises(CredentialsError) as e:
            resolve_credentials(WRDSConfig())
        msg = str(e.value)
        assert "WRDS_PASSWORD" in msg and str(tmp_path / "none") in msg and "keyring" in msg
        assert "wrds-sync login" in msg

        keyring.set_password("wrds", "ann", "from-keyring")
        assert resolve_credentials(WRDSConfig()).password.get_secret_value() == "from-keyring"

        pp = tmp_path / "pgpass"
        pp.write_text("wrds-pgdata.wharton.upenn.edu:9737:other:ann:no\n"
                      "*:9737:wrds:ann:from\\:pg\\\\pass\n")
        pp.chmod(0o600)
        monkeypatch.setenv("PGPASSFILE", str(pp))
        with events.capture_events() as got:
            assert resolve_credentials(WRDSConfig()).password.get_secret_value() == "from:pg\\pass"
        assert got == []
        pp.chmod(0o644)
        with events.capture_events() as got:
            resolve_credentials(WRDSConfig())
        assert [g["event"] for g in got] == [events.CREDENTIALS_FILE_MODE] and "chmod 600" in got[0]["fix"]

        monkeypatch.setenv("WRDS_PASSWORD", "from-env")
        cfg = resolve_credentials(WRDSConfig())
        assert cfg.password.get_secret_value() == "from-env" and cfg.username == "ann"
        assert "from-env" not in repr(cfg) and "from-env" not in libpq_uri(cfg).replace("from-env", "", 1)
    finally:
        keyring.set_keyring(previous)


def test_password_never_reaches_events(demo, wrds_db, password_role):
    pw = password_role  # a role that must give this password (scram)
    cfg = demo.config(wrds_db, username="wrds_user", password=SecretStr(pw))
    with events.capture_events() as got, WRDSClient(cfg) as c:
        c.execute_query("select 1")
        with pytest.raises(QueryError):
            c.execute_query(f"select '{pw}' from nowhere")
    assert got and pw not in repr(got)


STREAM = textwrap.dedent("""
    import resource, sys
    from wrds_sync_nb.client import WRDSClient
    from wrds_sync_nb.demo import DemoSource
    c = WRDSClient(DemoSource(sys.argv[1]).config(sys.argv[2])).connect()
    sum(b.num_rows for b in c.iter_batches("select * from crsp.dsf_v2 limit 10"))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = sum(b.num_rows for b in c.iter_batches('select * from "crsp"."dsf_v2"', batch_rows=100_000))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(rows, (peak - base) // 1024)
""")


def test_streaming_2m_rows_keeps_rss_growth_under_200mb(demo):
    demo.build("stream2m", daily_rows=2_000_000, start_year=2016, end_year=2025)
    exact = demo.execute("select count(*) from crsp.dsf_v2", database="stream2m")[0][0]
    out = subprocess.run([sys.executable, "-c", STREAM, str(demo.root), "stream2m"], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    rows, growth_mb = int(out[0]), int(out[1])
    assert rows == exact >= 1_900_000
    assert growth_mb < 200, f"peak RSS grew {growth_mb} MB while streaming {rows} rows"
