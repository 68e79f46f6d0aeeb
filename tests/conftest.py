"""Shared fixtures: one real PostgreSQL (pgserver) per test session, a WRDS-shaped template database built
once, and a fresh copy of it for every test that needs one."""
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import shared helpers from sibling modules

from wrds_sync_nb.demo import DEMO_ROLE, DemoSource  # noqa: E402

TEMPLATE = "wrds_template"
_ids = itertools.count()


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The session's PostgreSQL server with a small WRDS-shaped template database (2021-2025)."""
    src = DemoSource(tmp_path_factory.mktemp("pg")).start()
    src.build(TEMPLATE, daily_rows=3_000, start_year=2021, end_year=2025)
    yield src
    src.stop()


@pytest.fixture
def wrds_db(demo):
    """A private copy of the template for one test: its database name."""
    name = f"wrds_t{os.getpid()}_{next(_ids)}"
    demo.clone(TEMPLATE, name)
    yield name
    demo.execute(f'drop database if exists "{name}" with (force)', database="postgres")


@pytest.fixture
def env(demo, wrds_db, monkeypatch):
    """WRDS_* pointing at the test database, logged in as the demo account (never the superuser)."""
    cfg = demo.config(wrds_db)
    for k in ("WRDS_USER", "WRDS_ID", "WRDS_SYNC_DATA_DIR", "WRDS_SYNC_DATASETS", "WRDS_MAX_CONNECTIONS", "WRDS_FINGERPRINT_METHOD",
              "WRDS_PASSWORD_EXPIRES_ON"):
        monkeypatch.delenv(k, raising=False)
    values = {"WRDS_HOST": cfg.host, "WRDS_PORT": "5432", "WRDS_DATABASE": wrds_db, "WRDS_USERNAME": DEMO_ROLE,
              "WRDS_PASSWORD": "demo-password", "WRDS_SSLMODE": "disable", "WRDS_RATE_LIMIT_QUERIES_PER_MINUTE": "100000"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture
def password_role(demo):
    """A role that must authenticate with a password (scram) over the socket, and its awkward password."""
    pw = "p@ss:w/rd %41\\ x'\""
    demo.execute("create role wrds_user login password %s", (pw,), database="postgres")
    hba = demo.root / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("local all wrds_user scram-sha-256\n" + original)
    demo.execute("select pg_reload_conf()", database="postgres")
    yield pw
    hba.write_text(original)
    demo.execute("select pg_reload_conf()", database="postgres")
    demo.execute("drop role wrds_user", database="postgres")


@pytest.fixture
def tmpfs(tmp_path):
    """A real 8 MiB tmpfs, for full-disk tests (needs root: skipped with the reason otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path, leave=0):
    """Write a filler file until the filesystem is full (then give back `leave` bytes)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        block = b"\0" * 65536
        while True:
            try:
                os.write(fd, block)
            except OSError:
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def served(start, factory, name):
    """A server for the session, stopped at its end."""
    srv = start(factory.mktemp(name))
    try:
        yield srv
    finally:
        srv.proc.terminate()
        srv.proc.wait(30)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """SeaweedFS (`weed mini`) on 127.0.0.1, for the session."""
    from stores import start_seaweedfs
    yield from served(start_seaweedfs, tmp_path_factory, "seaweedfs")


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    """moto's S3 server on 127.0.0.1, for the session."""
    from stores import start_moto
    yield from served(start_moto, tmp_path_factory, "moto")
