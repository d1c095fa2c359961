#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server on loopback for the store's tests (Debian's `postgresql`,
# installed with apt when missing) and prints its URL on stdout:
#   export AGENTCORE_TEST_POSTGRES_URL=$(scripts/setup_postgres.sh)
# The cluster lives in $AGENTCORE_PG_DIR (default /tmp/agentcore-pg), listens on 127.0.0.1 only,
# port $AGENTCORE_PG_PORT (default 54329), and trusts loopback connections: it is for tests, not
# for data. Run it again to reuse a running cluster; `scripts/setup_postgres.sh stop` stops it.
set -euo pipefail

dir=${AGENTCORE_PG_DIR:-/tmp/agentcore-pg}
port=${AGENTCORE_PG_PORT:-54329}
url="postgres://postgres@127.0.0.1:${port}/postgres"

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

bin=$(find_bin)
if [[ -z "$bin" ]]; then
    echo "installing Debian's postgresql" >&2
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
    else
        sudo apt-get update -q >&2
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
    fi
    bin=$(find_bin)
fi

# initdb and postgres refuse to run as root: run them as the `postgres` user then.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [[ "${1:-}" == "stop" ]]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast stop >&2 || true
    exit 0
fi

if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
        --no-locale >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
fi

if ! as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c fsync=off" \
        start >&2 || { cat "$dir/server.log" >&2; exit 1; }
fi

"$bin/pg_isready" -h 127.0.0.1 -p "$port" -t 30 >&2
echo "$url"
