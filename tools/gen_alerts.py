"""Write runbooks/alerts.qmd from wrds_sync_nb.events.ALERTS (tests fail if the committed page differs)."""
from pathlib import Path

from wrds_sync_nb.events import alerts_markdown

page = Path(__file__).resolve().parent.parent / "runbooks" / "alerts.qmd"
page.write_text(alerts_markdown())
print(f"wrote {page}")
