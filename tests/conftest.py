"""Shared fixtures: one real PostgreSQL (pgserver) per test session, a WRDS-shaped template database built
once, and a fresh copy of it for every test that needs one."""
import itertools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import shared helpers from sibling modules

from wrds_sync_nb.demo import DemoSource  # noqa: E402

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
