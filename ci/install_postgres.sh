#!/usr/bin/env bash
# Install (if missing), start (if stopped) and prepare a local PostgreSQL server for the tests.
#
# Idempotent: on a machine where the server is installed and running it only
# checks the role and the database. On a fresh Debian/Ubuntu machine (as root,
# or with password-less sudo) it installs the distribution's `postgresql`
# package, creates a cluster when there is none, starts it on localhost and
# creates:
#   role     $NAS_PG_USER (default nas), password $NAS_PG_PASSWORD, CREATEDB
#            (the reliability tests create one scratch database per test)
#   database $NAS_PG_DB (default nas_test), owned by that role
#
# Everything is logged to stderr; the only line on stdout is the connection
# URL, so that callers can do
#   export NAS_TEST_POSTGRES_URL="$(ci/install_postgres.sh)"
# Exits non-zero (with a one-line reason on stderr) when no server can be had.
set -euo pipefail

PG_USER="${NAS_PG_USER:-nas}"
PG_PASSWORD="${NAS_PG_PASSWORD:-nasCiPw_9f3b2e71}"
PG_DB="${NAS_PG_DB:-nas_test}"

log() { echo "install_postgres: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    SUDO=()
    NOT_ROOT=1
fi

server_installed() {
    compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null 2>&1 && command -v pg_ctlcluster >/dev/null 2>&1
}

# ------------------------------------------------------------------ install
if ! server_installed; then
    [ -z "${NOT_ROOT:-}" ] || die "PostgreSQL is not installed and this user can neither apt-get nor sudo."
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is not available."
    log "installing the distribution's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q >&2 || log "apt-get update failed; trying the install with the cached lists"
    "${SUDO[@]}" apt-get install -y -q postgresql >&2 || die "apt-get install postgresql failed."
    server_installed || die "the postgresql package installed no server binaries."
fi

# ------------------------------------------------------------------ cluster
# pg_lsclusters columns: Ver Cluster Port Status Owner Data-directory Log-file
cluster_line() { pg_lsclusters --no-header 2>/dev/null | awk 'NF >= 4 {print; exit}'; }
if [ -z "$(cluster_line)" ]; then
    version="$(basename "$(dirname "$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n 1)")")")"
    log "creating cluster $version/main"
    "${SUDO[@]}" pg_createcluster "$version" main >&2 || die "pg_createcluster $version main failed."
fi
read -r PG_VERSION PG_CLUSTER PG_PORT PG_STATUS _ PG_DATA _ <<<"$(cluster_line)"

if [[ "$PG_STATUS" != online* ]]; then
    log "starting cluster $PG_VERSION/$PG_CLUSTER on port $PG_PORT"
    if ! "${SUDO[@]}" pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start >&2; then
        # A server killed with its machine leaves postmaster.pid behind; if that pid now belongs to
        # another process the server refuses to start. The cluster is down, so the file is stale.
        log "start failed; removing a stale $PG_DATA/postmaster.pid (if any) and retrying"
        "${SUDO[@]}" rm -f "$PG_DATA/postmaster.pid"
        "${SUDO[@]}" pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start >&2 \
            || die "pg_ctlcluster $PG_VERSION $PG_CLUSTER start failed; see /var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log."
    fi
fi
for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || die "the server on 127.0.0.1:$PG_PORT does not accept connections."

# ------------------------------------------------------------------ role and database
as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"
    elif [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"
    else "${SUDO[@]}" -u postgres "$@"
    fi
}
psql_admin() { as_postgres psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtAX "$@"; }

# The password goes through a psql variable (:'pw' quotes it), never through the command line.
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != 1 ]; then
    log "creating role $PG_USER"
    printf '%s\n' "CREATE ROLE \"$PG_USER\" LOGIN CREATEDB PASSWORD :'pw';" | psql_admin -v pw="$PG_PASSWORD" >&2
else
    printf '%s\n' "ALTER ROLE \"$PG_USER\" LOGIN CREATEDB PASSWORD :'pw';" | psql_admin -v pw="$PG_PASSWORD" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
    log "creating database $PG_DB"
    psql_admin -c "CREATE DATABASE \"$PG_DB\" OWNER \"$PG_USER\"" >&2
fi

URL="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -qtAX -c 'SELECT 1' >/dev/null \
    || die "cannot log in to $PG_DB as $PG_USER over TCP on 127.0.0.1:$PG_PORT (check pg_hba.conf)."
log "PostgreSQL $PG_VERSION ready on 127.0.0.1:$PG_PORT, database $PG_DB, user $PG_USER"
echo "$URL"
