#!/usr/bin/env bash
# Driver compatibility harness: runs a PostgreSQL driver's own test suite twice against
# the demo's throwaway cluster, once directly at the primary and once through pgsplit,
# and prints the counts of both runs and the tests whose outcome differs.
#
#   tests/compat/run.sh SUITE CHECKOUT
#
# SUITE: psycopg | asyncpg | node-postgres | pgjdbc (pgjdbc needs no CHECKOUT; pass `-`).
# See tests/compat/README.md.
#
# Environment:
#   PGSPLIT_BIN          pgsplit command (default: target/debug/pgsplit if present, else
#                        `cargo run --release --`)
#   COMPAT_OUT           output dir (default /tmp/pgsplit-compat/SUITE)
#   COMPAT_VENV          Python venv for psycopg/asyncpg (default /tmp/pgsplit-compat/venv-SUITE)
#   COMPAT_PORT          pgsplit's listen port (default 0: any free port)
#   COMPAT_TIMEOUT       seconds each run of the suite may take (default 3600)
#   COMPAT_TEST_TIMEOUT  seconds one test may take (pytest-timeout; default 120)
#   COMPAT_PYTEST_MARK   psycopg's pytest -m expression (default "not mypy"; "not mypy and
#                        not slow and not timing" skips the ~800 slow tests and halves the time)
#   COMPAT_ONLY          `direct` or `pgsplit` to run only one target
#   COMPAT_TEST_ARGS     pytest arguments replacing `tests` (psycopg, asyncpg), a `find -path`
#                        pattern of test files (node-postgres), or check names (pgjdbc)
set -euo pipefail

usage() {
    echo "usage: $0 psycopg|asyncpg|node-postgres|pgjdbc CHECKOUT" >&2
    exit 2
}
[ $# -eq 2 ] || usage
SUITE=$1
case "$SUITE" in psycopg | asyncpg | node-postgres | pgjdbc) ;; *) usage ;; esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
if [ "$SUITE" = pgjdbc ]; then
    CHECKOUT=
else
    [ -d "$2" ] || { echo "no checkout at $2" >&2; exit 2; }
    CHECKOUT=$(cd "$2" && pwd)
fi

OUT=${COMPAT_OUT:-/tmp/pgsplit-compat/$SUITE}
VENV=${COMPAT_VENV:-/tmp/pgsplit-compat/venv-$SUITE}
SUITE_TIMEOUT=${COMPAT_TIMEOUT:-3600}
TEST_TIMEOUT=${COMPAT_TEST_TIMEOUT:-120}
TEST_ARGS=${COMPAT_TEST_ARGS:-}
PYTEST_MARK=${COMPAT_PYTEST_MARK:-not mypy}
DB=compat
mkdir -p "$OUT"

if [ -z "${PGSPLIT_BIN:-}" ]; then
    if [ -x "$ROOT/target/debug/pgsplit" ]; then
        PGSPLIT_BIN=$ROOT/target/debug/pgsplit
    else
        PGSPLIT_BIN="cargo run --release --"
    fi
fi

log() { echo "[compat $(date +%H:%M:%S)] $*" >&2; }

# --- the demo cluster and pgsplit -------------------------------------------------------
DEMO_PID=
stop_demo() {
    if [ -n "$DEMO_PID" ] && kill -0 "$DEMO_PID" 2>/dev/null; then
        log "stopping the demo (pid $DEMO_PID)"
        kill -TERM "$DEMO_PID" 2>/dev/null || true
        for _ in $(seq 1 60); do
            kill -0 "$DEMO_PID" 2>/dev/null || break
            sleep 1
        done
        kill -KILL "$DEMO_PID" 2>/dev/null || true
    fi
}
trap stop_demo EXIT
trap 'exit 130' INT TERM

log "starting $PGSPLIT_BIN demo (log: $OUT/demo.log)"
# shellcheck disable=SC2086 # PGSPLIT_BIN may be a command with arguments.
(cd "$ROOT" && exec $PGSPLIT_BIN demo --listen "127.0.0.1:${COMPAT_PORT:-0}") >"$OUT/demo.log" 2>&1 &
DEMO_PID=$!
for i in $(seq 1 900); do
    grep -q "Press Ctrl-C" "$OUT/demo.log" && break
    if ! kill -0 "$DEMO_PID" 2>/dev/null; then
        cat "$OUT/demo.log" >&2
        echo "the demo exited before it was ready" >&2
        exit 1
    fi
    [ "$i" -lt 900 ] || { echo "the demo was not ready within 900 s" >&2; exit 1; }
    sleep 1
done

# "pgsplit is listening on 127.0.0.1:38047. Connect with:"
PROXY_ADDR=$(sed -n 's/^pgsplit is listening on \([0-9.]*:[0-9]*\)\..*/\1/p' "$OUT/demo.log" | head -1)
# "  primary  postgres://postgres:PASSWORD@127.0.0.1:37937/postgres"
PRIMARY_URI=$(sed -n 's/^ *primary *\(postgres:\/\/[^ ]*\).*/\1/p' "$OUT/demo.log" | head -1)
[ -n "$PROXY_ADDR" ] && [ -n "$PRIMARY_URI" ] || {
    cat "$OUT/demo.log" >&2
    echo "cannot find pgsplit's address or the primary's URI in the demo's output" >&2
    exit 1
}
# postgres://USER:PASSWORD@HOST:PORT/DB; the demo percent-encodes, its passwords need none.
rest=${PRIMARY_URI#postgres://}
PGUSER_=${rest%%:*}
rest=${rest#*:}
PGPASS_=${rest%%@*}
rest=${rest#*@}
PRIMARY_HOST=${rest%%:*}
rest=${rest#*:}
PRIMARY_PORT=${rest%%/*}
PROXY_HOST=${PROXY_ADDR%:*}
PROXY_PORT=${PROXY_ADDR##*:}
log "primary $PRIMARY_HOST:$PRIMARY_PORT, pgsplit $PROXY_HOST:$PROXY_PORT, user $PGUSER_, database $DB"

primary_sql() {
    PGPASSWORD=$PGPASS_ PGCONNECT_TIMEOUT=10 PGOPTIONS="-c client_min_messages=warning" psql -X -q -At -v ON_ERROR_STOP=1 \
        -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$PGUSER_" -d postgres "$@"
}

# A fresh database of the same name before each run, replicated to the standbys before
# the run starts, so both runs start from the same state.
reset_db() {
    primary_sql -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
    for _ in $(seq 1 300); do
        lagging=$(primary_sql -c "SELECT count(*) FROM pg_stat_replication
            WHERE replay_lsn IS NULL OR replay_lsn < pg_current_wal_lsn()")
        [ "$lagging" = 0 ] && return 0
        sleep 0.2
    done
    log "warning: standbys still lag after 60 s"
}

# --- suite set-up ---------------------------------------------------------------------
setup_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        python3 -m venv "$VENV"
    fi
    log "pip install $*"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$@"
}

case "$SUITE" in
psycopg)
    # The pure-Python implementation from the checkout, and the test dependencies of
    # psycopg[test] but mypy (its tests type-check code and never touch a server).
    setup_venv "$CHECKOUT/psycopg" "$CHECKOUT/psycopg_pool" "anyio>=4.0" "pproxy>=2.7" \
        "pytest>=6.2.5" pytest-timeout
    ;;
asyncpg)
    setup_venv "asyncpg==0.31.*" pytest pytest-timeout distro
    ;;
node-postgres)
    if [ ! -d "$CHECKOUT/node_modules" ]; then
        log "npm install in $CHECKOUT"
        (cd "$CHECKOUT" && npm install --no-audit --no-fund --ignore-scripts) >"$OUT/npm-install.log" 2>&1
    fi
    if [ ! -e "$CHECKOUT/packages/pg-protocol/dist/index.js" ]; then
        log "building pg-protocol (tsc)"
        (cd "$CHECKOUT/packages/pg-protocol" && npx tsc --build) >"$OUT/tsc.log" 2>&1
    fi
    ;;
pgjdbc)
    JAR=${PGJDBC_JAR:-/usr/share/java/postgresql.jar}
    [ -r "$JAR" ] || {
        echo "no pgjdbc jar at $JAR: apt-get update && apt-get install -y libpostgresql-jdbc-java" >&2
        exit 1
    }
    mkdir -p "$OUT/classes"
    javac -d "$OUT/classes" -cp "$JAR" "$HERE/PgjdbcProbe.java"
    ;;
esac

# --- one run --------------------------------------------------------------------------
# run_target LABEL HOST PORT: leaves $OUT/LABEL.xml or $OUT/LABEL.txt and $OUT/LABEL.log.
RESULT_EXT=xml
run_target() {
    local label=$1 host=$2 port=$3 rc=0
    reset_db
    log "running $SUITE against $label ($host:$port), log: $OUT/$label.log"
    local start=$SECONDS
    case "$SUITE" in
    psycopg)
        # -p no:cacheprovider cannot be used: psycopg's conftest.py keeps a segfault marker
        # in the cache, so the cache goes to the output dir instead.
        # shellcheck disable=SC2086
        (cd "$CHECKOUT" && PSYCOPG_IMPL=python \
            PSYCOPG_TEST_DSN="host=$host port=$port user=$PGUSER_ password=$PGPASS_ dbname=$DB" \
            timeout --kill-after=60 "$SUITE_TIMEOUT" "$VENV/bin/python" -m pytest \
            -p no:randomly -o cache_dir="$OUT/$label.pytest_cache" -m "$PYTEST_MARK" \
            --timeout="$TEST_TIMEOUT" --junitxml="$OUT/$label.xml" -q -rfE ${TEST_ARGS:-tests}) \
            >"$OUT/$label.log" 2>&1 || rc=$?
        ;;
    asyncpg)
        # With PGHOST set the suite uses the running server (tests that need a cluster it
        # manages skip). bin/pytest rather than `python -m pytest`, so that the installed
        # asyncpg (binary wheel) is imported, not the checkout's uncompiled sources.
        # shellcheck disable=SC2086
        (cd "$CHECKOUT" && PGHOST=$host PGPORT=$port PGUSER=$PGUSER_ PGPASSWORD=$PGPASS_ \
            PGDATABASE=$DB timeout --kill-after=60 "$SUITE_TIMEOUT" "$VENV/bin/pytest" \
            -p no:cacheprovider --timeout="$TEST_TIMEOUT" --junitxml="$OUT/$label.xml" \
            -rfE ${TEST_ARGS:-tests}) >"$OUT/$label.log" 2>&1 || rc=$?
        ;;
    node-postgres)
        RESULT_EXT=txt
        local logs="$OUT/$label.logs" f name
        rm -rf "$logs" && mkdir -p "$logs"
        (
            cd "$CHECKOUT/packages/pg"
            export PGHOST=$host PGPORT=$port PGUSER=$PGUSER_ PGPASSWORD=$PGPASS_ PGDATABASE=$DB
            deadline=$((SECONDS + SUITE_TIMEOUT))
            find test/integration -name "*-tests.js" -path "*${TEST_ARGS}*" | sort | while read -r f; do
                [ "$SECONDS" -lt "$deadline" ] || { echo "suite deadline reached before $f"; break; }
                name=${f//\//__}
                echo "== $f"
                frc=0
                timeout --kill-after=10 "$TEST_TIMEOUT" node "$f" >"$logs/$name.log" 2>&1 || frc=$?
                echo "$frc" >"$logs/$name.rc"
                echo "   exit $frc"
            done
        ) >"$OUT/$label.log" 2>&1 || rc=$?
        python3 "$HERE/diff.py" node-results "$logs" >"$OUT/$label.txt"
        ;;
    pgjdbc)
        RESULT_EXT=txt
        # shellcheck disable=SC2086
        timeout --kill-after=10 "$SUITE_TIMEOUT" java -cp "$OUT/classes:$JAR" PgjdbcProbe \
            "jdbc:postgresql://$host:$port/$DB" "$PGUSER_" "$PGPASS_" $TEST_ARGS \
            >"$OUT/$label.txt" 2>"$OUT/$label.log" || rc=$?
        cat "$OUT/$label.txt" >>"$OUT/$label.log"
        ;;
    esac
    log "$label: exit $rc after $((SECONDS - start)) s"
    echo "$rc $((SECONDS - start))" >"$OUT/$label.exit"
}

ONLY=${COMPAT_ONLY:-}
[ "$ONLY" = pgsplit ] || run_target direct "$PRIMARY_HOST" "$PRIMARY_PORT"
[ "$ONLY" = direct ] || run_target pgsplit "$PROXY_HOST" "$PROXY_PORT"

stop_demo
echo
if [ -z "$ONLY" ]; then
    python3 "$HERE/diff.py" compare "$SUITE" "$OUT/direct.$RESULT_EXT" "$OUT/pgsplit.$RESULT_EXT" |
        tee "$OUT/summary.txt"
else
    python3 "$HERE/diff.py" compare "$SUITE" "$OUT/$ONLY.$RESULT_EXT" "$OUT/$ONLY.$RESULT_EXT" |
        head -4 | tee "$OUT/summary.txt"
fi
echo
echo "raw results: $OUT (direct.* and pgsplit.*, demo.log)"
