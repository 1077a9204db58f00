#!/usr/bin/env bash
# Makes sure a PostgreSQL for the ledger tests answers on 127.0.0.1:5432 with trust
# authentication and a database `test`: installs Debian's server if missing, starts the
# newest cluster, trusts loopback connections and creates the database. Needs root.
set -euo pipefail

ready() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
usable() { psql -h 127.0.0.1 -U postgres -d test -Atqc 'select 1' >/dev/null 2>&1; }

if ready && usable; then exit 0; fi
if ! command -v pg_ctlcluster >/dev/null; then
  apt-get update -qq && apt-get install -y -qq postgresql
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
hba="/etc/postgresql/$version/main/pg_hba.conf"
if ! grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
  # The first matching line wins in pg_hba.conf, so the trust line goes on top.
  sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  ready && pg_ctlcluster --skip-systemctl-redirect "$version" main reload
fi
ready || pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
for _ in $(seq 1 30); do ready && break; sleep 1; done
ready || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
if ! usable; then
  psql -h 127.0.0.1 -U postgres -Atqc 'CREATE DATABASE test'
fi
usable || { echo "PostgreSQL on 127.0.0.1:5432 refuses user postgres on database test" >&2; exit 1; }
