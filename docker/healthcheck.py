"""Container health checks, with the standard library and the app's settings only.

    python docker/healthcheck.py api     # GET /healthz on the local API
    python docker/healthcheck.py worker  # the worker's heartbeat file is fresh
    python docker/healthcheck.py db      # the database accepts a connection
"""

from __future__ import annotations

import sys
import time
import urllib.request


def main(role: str) -> int:
    from service.config import get_settings

    settings = get_settings()
    if role == "api":
        url = f"http://127.0.0.1:{settings.port}/healthz"
        with urllib.request.urlopen(url, timeout=4) as resp:
            return 0 if resp.status == 200 else 1
    if role == "worker":
        age = time.time() - settings.worker_heartbeat.stat().st_mtime
        return 0 if age < max(30.0, 10 * settings.worker_poll_seconds) else 1
    if role == "db":
        from sqlalchemy import text

        from service.store.db import make_engine

        engine = make_engine(settings.resolved_database_url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
        return 0
    print(f"unknown role {role!r}: api, worker or db", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "api"))
    except Exception as exc:  # unhealthy, with the reason in `docker inspect`
        print(f"unhealthy: {exc}", file=sys.stderr)
        sys.exit(1)
