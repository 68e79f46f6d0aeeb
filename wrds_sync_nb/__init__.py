__version__ = "0.1.0"

# The front door (see nbs/10b_api.ipynb): `import wrds_sync_nb as w; w.sync("crsp"); w.connect()`.
# Each name is imported when first used, so that the `wrds-sync` command does not load polars, pandas and DuckDB
# for commands that never read data (`--help`, `status`, `lock-status`).
import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING, Any

_HOME = {"Synced": "api", "add_table": "api", "close": "api", "describe_table": "api", "diff": "api",
         "history": "api", "list_libraries": "api", "list_tables": "api", "status": "api", "sync": "api",
         "verify": "api", "wrds_client": "api", "get_table": "rawsql", "raw_sql": "rawsql", "cite": "reader",
         "connect": "reader", "scan": "reader", "iceberg_table": "iceberg"}
__all__ = ["Synced", "add_table", "cite", "close", "connect", "describe_table", "diff", "get_table", "history",
           "iceberg_table", "list_libraries", "list_tables", "raw_sql", "scan", "status", "sync", "verify",
           "wrds_client"]


def _load(name: str) -> Any:
    return getattr(import_module(f"wrds_sync_nb.{_HOME[name]}"), name)


def __getattr__(name: str) -> Any:
    if name not in _HOME: raise AttributeError(f"module 'wrds_sync_nb' has no attribute {name!r}")
    value = _load(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])


def _front(name: str) -> property:
    "The API's `name`, which a module of that name loading later does not replace"
    def get(self: types.ModuleType) -> Any: return _load(name)
    def keep(self: types.ModuleType, value: Any) -> None: pass   # the import system setting the submodule
    return property(get, keep)


class _Package(types.ModuleType):
    """The package, whose `sync`, `status` and `history` stay the API's functions when the modules of the same
    names load (importing a submodule sets the package's attribute of its name)"""
    sync, status, history = _front("sync"), _front("status"), _front("history")


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:
    from .api import (Synced, add_table, close, describe_table, diff, history, list_libraries, list_tables, status,
                      sync, verify, wrds_client)
    from .iceberg import iceberg_table
    from .rawsql import get_table, raw_sql
    from .reader import cite, connect, scan
