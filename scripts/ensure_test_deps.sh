#!/usr/bin/env bash
# Services and system packages the suite talks to for real: PostgreSQL on 127.0.0.1:5432 and,
# for the browser test, Debian's chromium + chromedriver. Started or installed only when missing.
set -u
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
      >/tmp/tbps-apt.log 2>&1 || echo "warning: could not install chromium (see /tmp/tbps-apt.log)"
  fi
fi
exit 0
