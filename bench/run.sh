#!/usr/bin/env bash
# The whole benchmark in one command, loopback only (see BENCHMARKS.md):
#
#   bench/run.sh
#
# 1. builds twofactord and twofactor-bench;
# 2. (unless REBUILD_EVENTS=0) runs the read side's rebuild benchmark over
#    REBUILD_EVENTS events (projections.BenchmarkRebuild), before anything else runs;
# 3. creates two scratch databases: one migrated and seeded for the two pgbench
#    ceilings (bench/seed.sql; bench/minimal.sql, the least a replay-safe TOTP
#    check must do, and bench/command.sql, the service's own transaction
#    shape), one served by
#    `twofactord serve` (fixed benchmark keys, not --dev; rate limits off; email
#    to the tool's loopback SMTP sink);
# 4. creates a tenant and runs twofactor-bench: pgbench ceilings, enrolment of
#    the virtual users' pools, the scenarios enroll, backup, verify, mixed,
#    commit-to-visible lag, idle transactions, notifier throughput, growth by
#    stream length;
# 5. prints the tables and issue 13's targets with their verdicts (also in
#    $OUT/report.md and report.json), stops the server and drops the scratch
#    databases (KEEP=1 keeps them).
#
# Knobs (environment): PGURL (server, default postgres://postgres@127.0.0.1:5432),
# CONCURRENCY (16), DURATION (20s per scenario and for pgbench), USERS_PER_VU (500),
# SCENARIOS (enroll,backup,verify,mixed: TOTP logins last, when every user has unused steps), LAG_RATE (200; 0 skips),
# IDLE (10s without requests, the database's transactions counted; 0 skips), CONSUMERS (what the idle
# transactions are divided by; default: the consumer groups in the server's database), NOTIFIER_LOGINS (2000; 0 skips),
# GROWTH_USERS (20 per stream length; 0 skips), REBUILD_EVENTS (1000000; 0 skips),
# PAIRED_CEILING (10s: both pgbench scripts again right before each scenario, which is compared with them; 0 skips),
# PROFILE=1 (also a CPU profile of the verify scenario, BenchmarkVerifyHTTP),
# SERVER_BIN (a twofactord binary to measure instead of building one), PORT, SMTP_PORT, OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
CONCURRENCY=${CONCURRENCY:-16}
DURATION=${DURATION:-20s}
USERS_PER_VU=${USERS_PER_VU:-500}
SCENARIOS=${SCENARIOS:-enroll,backup,verify,mixed}
LAG_RATE=${LAG_RATE:-200}
IDLE=${IDLE:-10s}
CONSUMERS=${CONSUMERS:-0}
NOTIFIER_LOGINS=${NOTIFIER_LOGINS:-2000}
GROWTH_USERS=${GROWTH_USERS:-20}
PAIRED_CEILING=${PAIRED_CEILING:-10s}
REBUILD_EVENTS=${REBUILD_EVENTS:-1000000}
PROFILE=${PROFILE:-0}
PORT=${PORT:-18080}
SMTP_PORT=${SMTP_PORT:-2525}
PGBENCH_USERS=250
RUN=tfbench_$(date +%s)_$$
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/twofactor-bench.XXXXXX")}
mkdir -p "$OUT"
BIN="$OUT/bin"
mkdir -p "$BIN"

# Benchmark-only keys, fixed so that a kept scratch database (KEEP=1) can be
# served again. Never use them anywhere else.
export TWOFACTOR_MASTER_KEYS="bench:YmVuY2htYXJrLW9ubHktbWFzdGVyLWtleS0wMDAwMDA="
export TWOFACTOR_CODE_KEY="YmVuY2htYXJrLW9ubHktY29kZS1rZXktMDAwMDAwMDAwMDA="
unset TWOFACTOR_DEV

log() { echo "$(date +%H:%M:%S)  $*" >&2; }
dburl() { echo "$PGURL/$1?sslmode=disable"; }
psqlc() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

SERVE_PID=
cleanup() {
	if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then
		kill "$SERVE_PID" && wait "$SERVE_PID" 2>/dev/null || true
	fi
	if [ "${KEEP:-0}" != 1 ]; then
		for db in "${RUN}_pgbench" "${RUN}_serve"; do
			psqlc "$(dburl postgres)" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true
		done
	else
		log "kept databases ${RUN}_pgbench and ${RUN}_serve"
	fi
}
trap cleanup EXIT

for tool in psql pgbench go; do
	command -v "$tool" >/dev/null || { echo "bench/run.sh needs $tool" >&2; exit 1; }
done

log "building into $BIN"
if [ -n "${SERVER_BIN:-}" ]; then cp "$SERVER_BIN" "$BIN/twofactord"; else go build -o "$BIN/twofactord" ./cmd/twofactord; fi
go build -o "$BIN/twofactor-bench" ./cmd/twofactor-bench

{
	echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GB RAM, $(uname -sr)"
	echo "Software: $(go version | cut -d' ' -f3), $(psql "$(dburl postgres)" -Atc 'SHOW server_version' | cut -d' ' -f1) (PostgreSQL; fsync $(psql "$(dburl postgres)" -Atc 'SHOW fsync'), synchronous_commit $(psql "$(dburl postgres)" -Atc 'SHOW synchronous_commit'), shared_buffers $(psql "$(dburl postgres)" -Atc 'SHOW shared_buffers')), $(pgbench --version)"
	echo "Load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
} >"$OUT/machine.txt"

EXTRA=()
if [ "$REBUILD_EVENTS" -gt 0 ]; then
	log "rebuild: projections.BenchmarkRebuild over $REBUILD_EVENTS events (loads them first)"
	TEST_DATABASE_URL="$(dburl postgres)" TWOFACTOR_BENCH_EVENTS=$REBUILD_EVENTS \
		go test -run '^$' -bench '^BenchmarkRebuild$' -benchtime 1x -timeout 30m ./projections/ | tee "$OUT/rebuild.txt" >&2
	rate=$(awk '/^BenchmarkRebuild/ { for (i = 1; i < NF; i++) if ($(i+1) == "events/s") print $i }' "$OUT/rebuild.txt")
	detail=$(grep -o '[0-9]* events ([0-9]* loaded), [0-9]* users: .*' "$OUT/rebuild.txt" | head -1)
	EXTRA+=(--rebuild-rate "$rate" --rebuild-detail "twofactord replay's code, projections.Rebuild: ${detail}")
fi

log "scratch databases ${RUN}_pgbench and ${RUN}_serve"
psqlc "$(dburl postgres)" -c "CREATE DATABASE ${RUN}_pgbench" -c "CREATE DATABASE ${RUN}_serve"
"$BIN/twofactord" migrate --database-url "$(dburl "${RUN}_pgbench")" >/dev/null
psqlc "$(dburl "${RUN}_pgbench")" -v clients="$CONCURRENCY" -v users="$PGBENCH_USERS" -f bench/seed.sql

log "starting twofactord serve on 127.0.0.1:$PORT (log: $OUT/serve.log)"
"$BIN/twofactord" serve --database-url "$(dburl "${RUN}_serve")" --http-addr "127.0.0.1:$PORT" \
	--key-rate -1 --ip-rate -1 --smtp-url "smtp://127.0.0.1:$SMTP_PORT?tls=none" --mail-from bench@bench.test \
	>"$OUT/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do
	curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
	kill -0 "$SERVE_PID" 2>/dev/null || { tail -20 "$OUT/serve.log" >&2; exit 1; }
	sleep 0.2
done
"$BIN/twofactord" tenant create --database-url "$(dburl "${RUN}_serve")" --name "Bench" --json >"$OUT/tenant.json"

log "twofactor-bench: $CONCURRENCY virtual users, $DURATION per scenario"
"$BIN/twofactor-bench" --api "http://127.0.0.1:$PORT" --tenant "$OUT/tenant.json" \
	--concurrency "$CONCURRENCY" --duration "$DURATION" --scenarios "$SCENARIOS" --users-per-vu "$USERS_PER_VU" \
	--server-pid "$SERVE_PID" \
	--pgbench-db "$(dburl "${RUN}_pgbench")" --pgbench-script bench/command.sql --minimal-script bench/minimal.sql --pgbench-users "$PGBENCH_USERS" \
	--paired-ceiling "$PAIRED_CEILING" \
	--database-url "$(dburl "${RUN}_serve")" --growth-users "$GROWTH_USERS" --lag-rate "$LAG_RATE" --lag-duration "$DURATION" --idle "$IDLE" --consumers "$CONSUMERS" \
	--smtp-listen "127.0.0.1:$SMTP_PORT" --notifier-logins "$NOTIFIER_LOGINS" --json "$OUT/report.json" "${EXTRA[@]}" >"$OUT/report.md"
kill "$SERVE_PID" && wait "$SERVE_PID" 2>/dev/null || true
SERVE_PID=

if [ "$PROFILE" = 1 ]; then
	log "CPU profile of the verify scenario (BenchmarkVerifyHTTP, in-process server)"
	TEST_DATABASE_URL="$(dburl postgres)" TWOFACTOR_BENCH_CPUPROFILE="$OUT/verify.pprof" \
		go test -run '^$' -bench '^BenchmarkVerifyHTTP$' -benchtime 1x -timeout 20m ./bench/load/ >&2
	{
		echo
		echo "CPU profile of the verify scenario: $OUT/verify.pprof (go tool pprof -tagignore side=load-tool -top $OUT/verify.pprof)"
		go tool pprof -tags "$OUT/verify.pprof" 2>/dev/null | sed -n '/side:/,/^$/p'
	} >>"$OUT/report.md"
fi

cat "$OUT/machine.txt" "$OUT/report.md"
log "results in $OUT"
