#!/usr/bin/env bash
# bench/shield_memory.sh: 1,000,000 distinct client addresses through the shield's limiter
# keep levee's resident memory under a stated figure (default 200 MB, in all).
#
# levee (release, shield on with its defaults: max_tracked_clients = 1000000) in front of
# one fast simulated backend; bench/flood.py sends one request each from N distinct source
# addresses (127.100.0.1 upwards; connect, one request with Connection: close, read the
# answer, close with RST so no TIME_WAIT piles up). Then it reads levee's VmRSS (and VmHWM,
# the peak) from /proc and levee_shield_tracked_clients from the admin /metrics, and prints
# PASS/FAIL against the limit. See bench/README.md.
#
# Environment:
#   MEM_CLIENTS=1000000   distinct addresses
#   MEM_LIMIT_MB=200      the figure checked (VmRSS after the run, and the peak VmHWM)
#   MEM_TIME_LIMIT=300    seconds for sending; if fewer than MEM_CLIENTS were sent by then the
#                         script says so and extrapolates (linearly per tracked client)
#   MEM_CONCURRENCY=512   connections in progress at once
#   MEM_NICE=-10          nice value of levee, the backend and the generator (0: unchanged)
#   MEM_WRITE=1           append to bench/RESULTS.md under a "shield memory" heading
#   LEVEE_BIN=target/release/levee   KEEP_TMP=1 keeps configs and logs
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
INVOCATION="bench/shield_memory.sh${*:+ $*}"
CLIENTS=${MEM_CLIENTS:-1000000}
LIMIT_MB=${MEM_LIMIT_MB:-200}
TIME_LIMIT=${MEM_TIME_LIMIT:-300}
CONCURRENCY=${MEM_CONCURRENCY:-512}
NICE=${MEM_NICE:--10}
WRITE=${MEM_WRITE:-1}
LEVEE_BIN=${LEVEE_BIN:-target/release/levee}
[[ $LEVEE_BIN == /* ]] || LEVEE_BIN="$ROOT/$LEVEE_BIN"
BACKEND=127.0.0.1:18301
LEVEE_ADDR=127.0.0.1:18310
LEVEE_ADMIN=127.0.0.1:18311

log() { printf '[shield-memory] %s\n' "$*" >&2; }
die() { printf '[shield-memory] error: %s\n' "$*" >&2; exit 1; }

PYTHON=$(command -v python3) || die "python3 not found"
command -v curl >/dev/null || die "curl not found"
if [[ ! -x $LEVEE_BIN ]]; then
    log "building levee (cargo build --release)"
    cargo build --release --quiet || die "cargo build --release failed"
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# The binary as it is when the run starts (a shared target/ may be rebuilt meanwhile).
LEVEE_VER=$({ "$LEVEE_BIN" --version 2>/dev/null || true; } | awk 'NR == 1 { print $NF }')
LEVEE_VER="${LEVEE_VER:-?} (binary built $(date -u -r "$LEVEE_BIN" '+%Y-%m-%d %H:%M UTC'); tree at git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ', dirty tree'))"

NCPU=$(nproc)
PIN_SERVER=(); PIN_CLIENT=(); PINNING="none"
if (( NCPU >= 2 )) && command -v taskset >/dev/null; then
    PIN_SERVER=(taskset -c 0); PIN_CLIENT=(taskset -c 1)
    PINNING="levee and the backend on CPU 0, the generator on CPU 1"
fi
if [[ $NICE != 0 ]] && ! nice -n "$NICE" true 2>/dev/null; then
    log "warning: cannot run at nice $NICE (not root?); using 0"; NICE=0
fi
if [[ $NICE != 0 ]]; then
    PIN_SERVER=(nice -n "$NICE" "${PIN_SERVER[@]}"); PIN_CLIENT=(nice -n "$NICE" "${PIN_CLIENT[@]}")
    PINNING+=", all at nice $NICE"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/levee-shield-memory.XXXXXX")
PIDS=()
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
port_free() { ! (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }
for a in $BACKEND $LEVEE_ADDR $LEVEE_ADMIN; do port_free "$a" || die "$a is already in use"; done

cat >"$TMP/levee.toml" <<EOF
# The shield is on with every default (max_tracked_clients = 1000000).
[listener]
bind = "$LEVEE_ADDR"

[admin]
bind = "$LEVEE_ADMIN"

[access_log]
enabled = false

[pools.web]
servers = ["$BACKEND"]
max_concurrency = 1024
queue_size = 1024

[pools.web.health_check]
path = "/health"
EOF
"$LEVEE_BIN" check --config "$TMP/levee.toml" >/dev/null || die "invalid levee config"

"${PIN_SERVER[@]}" "$LEVEE_BIN" backend --listen "$BACKEND" --capacity 100000 --latency 1ms >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
"${PIN_SERVER[@]}" "$LEVEE_BIN" serve --config "$TMP/levee.toml" >"$TMP/levee.log" 2>&1 &
LEVEE_PID=$!
PIDS+=($LEVEE_PID)
deadline=$((SECONDS + 10))
until [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://$LEVEE_ADDR/" || true) == 200 ]]; do
    kill -0 "$LEVEE_PID" 2>/dev/null || { cat "$TMP/levee.log" >&2; die "levee exited"; }
    (( SECONDS < deadline )) || { cat "$TMP/levee.log" >&2; die "levee did not answer within 10s"; }
    sleep 0.1
done

kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
tracked() { curl -s -m 5 "http://$LEVEE_ADMIN/metrics" | awk '$1 == "levee_shield_tracked_clients" { print $2 }'; }
sleep 2
RSS_BEFORE=$(kb "$LEVEE_PID" VmRSS)
TRACKED_BEFORE=$(tracked)
log "levee pid $LEVEE_PID: VmRSS before ${RSS_BEFORE} kB, tracked clients ${TRACKED_BEFORE:-?}"
log "sending one request from each of $CLIENTS distinct addresses (127.100.0.1 upwards), at most ${TIME_LIMIT}s"

START=$SECONDS
"${PIN_CLIENT[@]}" "$PYTHON" "$ROOT/bench/flood.py" memory --target "$LEVEE_ADDR" --count "$CLIENTS" \
    --concurrency "$CONCURRENCY" --time-limit "$TIME_LIMIT" --out "$TMP/memory.json" &
GEN=$!
PIDS+=($GEN)
# levee's memory while it runs, every 5 s.
PEAK_SEEN=0
while kill -0 "$GEN" 2>/dev/null; do
    sleep 5
    kill -0 "$LEVEE_PID" 2>/dev/null || die "levee exited during the run (see $TMP/levee.log; KEEP_TMP=1)"
    r=$(kb "$LEVEE_PID" VmRSS); (( r > PEAK_SEEN )) && PEAK_SEEN=$r
    log "  t=$((SECONDS - START))s levee VmRSS $((r / 1024)) MB, tracked $(tracked)"
done
wait "$GEN" || die "flood.py failed"
sleep 2 # the tracked-clients gauge is refreshed once a second
kill -0 "$LEVEE_PID" 2>/dev/null || die "levee exited during the run"
RSS_AFTER=$(kb "$LEVEE_PID" VmRSS)
HWM=$(kb "$LEVEE_PID" VmHWM)
TRACKED=$(tracked)
read -r SENT SECS RATE LIMITED OUTCOMES < <("$PYTHON" -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(r["sent"], round(r["seconds"]), round(r["rate"]), int(r["time_limited"]),
      ",".join(f"{k}:{v}" for k, v in sorted(r["outcomes"].items())))' "$TMP/memory.json")

VERDICT=$("$PYTHON" - "$RSS_BEFORE" "$RSS_AFTER" "$HWM" "${TRACKED:-0}" "$SENT" "$CLIENTS" "$LIMIT_MB" "$LIMITED" <<'EOF'
import sys
before, after, hwm, tracked, sent, want, limit, limited = (float(x) for x in sys.argv[1:])
mb = lambda kb: kb / 1024
lines = []
per = (after - before) * 1024 / tracked if tracked else float("nan")
lines.append(f"- VmRSS before {mb(before):.1f} MB, after {mb(after):.1f} MB, peak (VmHWM) {mb(hwm):.1f} MB; "
             f"{tracked:.0f} clients tracked after {sent:.0f} distinct addresses: {per:.0f} bytes per tracked client")
ok = max(after, hwm) <= limit * 1024
if limited:
    proj = before + per * min(want, 1_000_000) / 1024
    lines.append(f"- only {sent:.0f} of {want:.0f} addresses were sent within the time limit: "
                 f"extrapolated linearly to {min(want, 1_000_000):.0f} tracked clients, VmRSS would be about {mb(proj):.0f} MB "
                 "(an estimate: the table grows in power-of-two steps, so the real figure can be higher)")
    ok = ok and proj <= limit * 1024
    lines.append(f"- **{'PASS' if ok else 'FAIL'}** (measured and extrapolated) against {limit:.0f} MB")
else:
    lines.append(f"- **{'PASS' if ok else 'FAIL'}**: levee's VmRSS (after and peak) {'<=' if ok else '>'} {limit:.0f} MB")
print("\n".join(lines))
EOF
)
echo
echo "| | value |"
echo "|---|---|"
echo "| distinct addresses sent | $SENT in ${SECS}s ($RATE/s)$( (( LIMITED )) && echo ", time-limited" ) |"
echo "| answers | $OUTCOMES |"
echo "| levee VmRSS before | $((RSS_BEFORE / 1024)) MB (tracked clients ${TRACKED_BEFORE:-?}) |"
echo "| levee VmRSS after | $((RSS_AFTER / 1024)) MB |"
echo "| levee VmHWM (peak RSS) | $((HWM / 1024)) MB |"
echo "| levee_shield_tracked_clients after | ${TRACKED:-?} |"
echo
echo "$VERDICT"
TABLE=$(cat <<EOF
| | value |
|---|---|
| distinct addresses sent | $SENT in ${SECS}s ($RATE/s)$( (( LIMITED )) && echo ", time-limited" ) |
| answers | $OUTCOMES |
| levee VmRSS before | $((RSS_BEFORE / 1024)) MB (tracked clients ${TRACKED_BEFORE:-?}) |
| levee VmRSS after | $((RSS_AFTER / 1024)) MB |
| levee VmHWM (peak RSS) | $((HWM / 1024)) MB |
| levee_shield_tracked_clients after | ${TRACKED:-?} |
EOF
)

if [[ $WRITE == 1 ]]; then
    ENV_PREFIX=""
    for v in MEM_CLIENTS MEM_LIMIT_MB MEM_TIME_LIMIT MEM_CONCURRENCY MEM_NICE LEVEE_BIN; do
        [[ -z ${!v:-} ]] || ENV_PREFIX+="$v=${!v} "
    done
    {
        echo
        echo "## shield memory: $(date -u '+%Y-%m-%d %H:%M UTC'), nproc $NCPU"
        echo
        echo "- machine: $NCPU cores (\`nproc\`), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(uname -sr), $(awk '/MemTotal/ { printf "%.0f GB RAM", $2 / 1048576 }' /proc/meminfo)"
        echo "- versions: levee $LEVEE_VER, Python $("$PYTHON" -c 'import platform; print(platform.python_version())')"
        echo "- command: \`${ENV_PREFIX}$INVOCATION\`; pinning: $PINNING"
        echo "- setup: levee \`serve\` (default threads) with the shield on and every shield default (\`max_tracked_clients = 1000000\`),"
        echo "  access log off, one \`levee backend --capacity 100000 --latency 1ms\`; \`bench/flood.py memory\`: one request"
        echo "  (\`Connection: close\`) from each distinct source address 127.100.0.1 upwards, $CONCURRENCY at once, closed with RST."
        echo "  VmRSS/VmHWM from /proc/PID/status; tracked clients from \`levee_shield_tracked_clients\` on the admin /metrics."
        echo
        echo "$TABLE"
        echo
        echo "$VERDICT"
    } >>"$ROOT/bench/RESULTS.md"
    log "appended to bench/RESULTS.md"
fi
