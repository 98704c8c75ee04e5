"""What /readyz checks beyond the index: the database schema and the job queue."""

from __future__ import annotations

import logging

from service.config import Settings
from service.store import crud
from service.store.db import schema_problem, session_scope

log = logging.getLogger(__name__)


def ready_problem(settings: Settings) -> str | None:
    """Why the service is not ready, or None: an unmigrated database or a stuck job queue."""
    url = settings.resolved_database_url
    try:
        problem = schema_problem(url)
        if problem:
            return problem
        with session_scope(url) as session:
            stuck = crud.queue_problem(session, lease_s=settings.job_lease_seconds,
                                       stuck_s=settings.job_stuck_seconds)
    except Exception as exc:  # the database is down or unreadable
        log.exception("readiness check could not read the database")
        return f"the database cannot be read: {type(exc).__name__}"
    return f"job queue stuck: {stuck}" if stuck else None
