#!/bin/sh
# Prestart step (docker-compose `prestart` service, or by hand before `tbps serve`):
# wait until the database accepts connections, then apply the Alembic migrations.
set -eu
TBPS="${TBPS:-tbps}"
tries="${TBPS_DB_WAIT_TRIES:-30}"
i=0
until python docker/healthcheck.py db; do
  i=$((i + 1))
  if [ "$i" -ge "$tries" ]; then
    echo "prestart: the database did not answer after $tries tries" >&2
    exit 1
  fi
  sleep 2
done
$TBPS migrate
