__version__ = "0.1.0"

# The front door (see nbs/10b_api.ipynb): `import wrds_sync_nb as w; w.sync("crsp"); w.connect()`.
from .api import Synced, add_table, close, describe_table, list_libraries, list_tables, status, sync, verify, wrds_client
from .rawsql import get_table, raw_sql
from .reader import cite, connect, scan

__all__ = ["Synced", "add_table", "cite", "close", "connect", "describe_table", "get_table", "list_libraries",
           "list_tables", "raw_sql", "scan", "status", "sync", "verify", "wrds_client"]
