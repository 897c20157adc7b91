"""Checks run before uvicorn starts, so a broken data folder is one line, not a traceback.

Inside the lifespan a failure to open the job index becomes uvicorn's
"Application startup failed" with a stack trace; here it becomes
``altyazi: ...`` on stderr and exit status 2, like a bad config value.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from storage.store import JobStore

DB_NAME = "altyazi.db"


def database_problem(data_dir: Path, path: Path | None = None) -> str | None:
    """Open (and migrate) the job index once (default data_dir/altyazi.db); what is wrong with it in one line, or None."""
    path = path or Path(data_dir) / DB_NAME

    async def probe() -> None:
        store = await JobStore.open(path)
        try:
            await store.count_jobs(("queued", "running"))  # reads a table, not just the header
        finally:
            await store.close()

    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        asyncio.run(probe())
    except sqlite3.DatabaseError as exc:
        return (
            f"the job index {str(path)!r} cannot be read ({exc}); it is damaged or not an altyazi database. "
            "Stop here and restore it from a backup, or move it away to start with an empty index"
        )
    except OSError as exc:
        return f"the data folder {str(data_dir)!r} cannot be used: {exc.strerror or exc}"
    return None
