#!/usr/bin/env bash
# bench/loadgen.sh: is `levee loadtest` ever the bottleneck? Compare it with wrk and oha against
# the same fast static backend (bench/static_backend.rs, or nginx with 1 worker and `return 200`
# with BENCH_BACKEND=nginx), then check that its open model
# holds a requested rate.
#
# 1. Closed model, same connections and threads: levee loadtest, wrk, oha (max requests/s).
# 2. Open model at 50% and 80% of the closed-model maximum with the same connections (levee's,
#    measured just before in each open round): the achieved rate and its error (target: within
#    1%), with corrected and uncorrected p99, over several rounds with a paired verdict.
#
# Environment:
#   BENCH_THREADS=1        client threads (levee --threads, wrk -t; oha is pinned to as many CPUs)
#   BENCH_CONNS=50         connections (levee -c, wrk -c, oha -c)
#   BENCH_DURATION=5s      each measurement (a 2s warm-up with wrk precedes the first)
#   BENCH_ROUNDS=10        closed-model rounds per tool, alternating the tools (6 or more give
#                          a 95% interval for the paired levee/wrk ratio)
#   BENCH_OPEN_ROUNDS=10   open-model rounds: each runs every open row once (6 or more give a
#                          95% interval for the median round's achieved/requested rate; 10, 98%
#                          without the worst round)
#   BENCH_OPEN_REF=round   the open model's rates are shares of levee's closed-model rate with
#                          the same connections, measured just before in each open round (median:
#                          of the highest median closed-model rate of the tools, with
#                          BENCH_CONNS, for every round; best: of the
#                          highest single round; on a machine whose speed drifts, a figure from
#                          minutes earlier over- or understates what it gives now)
#   BENCH_OPEN_CONNS="64 512"  open model: the most connections, one row per value (512 is
#                          levee's default; with 64 the backend is not slowed by cold
#                          connections, so the row measures the generator's pacing)
#   BENCH_BACKEND=static   the backend: static (bench/static_backend.rs, built with cargo: cheaper
#                          per request than the generators, so that they are the limit) or
#                          nginx (1 worker, `return 200`: on 2 cores about as costly per request
#                          as the generators, and the limit for all of them)
#   BENCH_WRITE=1          append the results to bench/RESULTS.md under "loadgen" (0: don't)
#   BENCH_PIN=1            0: no CPU pinning; 1: backend on CPU BENCH_BACKEND_CPU, clients on
#   BENCH_BACKEND_CPU=0       the next BENCH_THREADS CPUs from BENCH_CLIENT_CPU
#   BENCH_CLIENT_CPU=1
#   BENCH_TOOLS=target/bench-tools   where oha is installed (cargo install --root) if missing
#   LEVEE_BIN=target/release/levee   (built with cargo build --release if missing)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

INVOCATION="bench/loadgen.sh${*:+ $*}"
THREADS=${BENCH_THREADS:-1}
ROUNDS=${BENCH_ROUNDS:-10}
OPEN_CONNS=${BENCH_OPEN_CONNS:-64 512}
OPEN_REF=${BENCH_OPEN_REF:-round}
[[ $OPEN_REF == round || $OPEN_REF == median || $OPEN_REF == best ]] ||
    { echo "BENCH_OPEN_REF must be round, median or best" >&2; exit 1; }
OPEN_ROUNDS=${BENCH_OPEN_ROUNDS:-10}
[[ $OPEN_ROUNDS =~ ^[0-9]+$ && $OPEN_ROUNDS -ge 1 ]] || { echo "BENCH_OPEN_ROUNDS must be an integer >= 1" >&2; exit 1; }
CONNS=${BENCH_CONNS:-50}
DURATION=${BENCH_DURATION:-5s}
WRITE=${BENCH_WRITE:-1}
PIN=${BENCH_PIN:-1}
BACKEND_CPU=${BENCH_BACKEND_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
TOOLS=${BENCH_TOOLS:-$ROOT/target/bench-tools}
LEVEE_BIN=${LEVEE_BIN:-$ROOT/target/release/levee}
BACKEND_KIND=${BENCH_BACKEND:-static}
[[ $BACKEND_KIND == static || $BACKEND_KIND == nginx ]] || { echo "BENCH_BACKEND must be static or nginx" >&2; exit 1; }
STATIC_BIN=$ROOT/target/release/examples/static_backend
BACKEND=127.0.0.1:18181
URL="http://$BACKEND/"

log() { printf '[loadgen] %s\n' "$*" >&2; }
die() { printf '[loadgen] error: %s\n' "$*" >&2; exit 1; }

[[ $THREADS =~ ^[0-9]+$ && $CONNS =~ ^[0-9]+$ && $THREADS -ge 1 ]] ||
    die "BENCH_THREADS and BENCH_CONNS must be integers >= 1"
DURATION_S=${DURATION%s}
[[ $DURATION_S =~ ^[0-9]+$ && $DURATION_S -gt 0 ]] || die "BENCH_DURATION must be like 10s"

# ---------------------------------------------------------------- tools
find_bin() {
    local p
    p=$(command -v "$1" 2>/dev/null) && { echo "$p"; return 0; }
    for p in /usr/sbin/$1 /usr/local/sbin/$1 /sbin/$1 "$TOOLS/bin/$1"; do
        [[ -x $p ]] && { echo "$p"; return 0; }
    done
    return 1
}
SUDO=()
(( EUID == 0 )) || SUDO=(sudo)
missing=()
for tool in nginx wrk curl python3; do
    find_bin "$tool" >/dev/null || missing+=("$tool")
done
if (( ${#missing[@]} )); then
    log "installing ${missing[*]} (apt)"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! find_bin oha >/dev/null; then
    if apt-cache show oha >/dev/null 2>&1; then
        log "installing oha (apt)"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq oha >/dev/null
    else
        log "installing oha into $TOOLS (cargo install oha --locked; takes a few minutes once)"
        cargo install oha --locked --quiet --root "$TOOLS" || die "cargo install oha failed"
    fi
fi
NGINX=$(find_bin nginx) || die "nginx not found"
WRK=$(find_bin wrk) || die "wrk not found"
OHA=$(find_bin oha) || die "oha not found"
if [[ ! -x $LEVEE_BIN ]]; then
    log "building levee (cargo build --release)"
    cargo build --release --quiet || die "cargo build --release failed"
fi
[[ -x $LEVEE_BIN ]] || die "$LEVEE_BIN missing"
if [[ $BACKEND_KIND == static ]]; then
    log "building the static backend (cargo build --release --example static_backend)"
    cargo build --release --quiet --example static_backend || die "cannot build bench/static_backend.rs"
fi

NCPU=$(nproc)
LAST_CLIENT_CPU=$(( CLIENT_CPU + THREADS - 1 ))
if [[ $PIN == 1 ]] && command -v taskset >/dev/null && (( LAST_CLIENT_CPU < NCPU && BACKEND_CPU < NCPU )); then
    PIN_BACKEND=(taskset -c "$BACKEND_CPU")
    PIN_CLIENT=(taskset -c "$CLIENT_CPU-$LAST_CLIENT_CPU")
    PINNING="backend on CPU $BACKEND_CPU, the load generator on CPU $CLIENT_CPU-$LAST_CLIENT_CPU"
else
    PIN_BACKEND=()
    PIN_CLIENT=()
    PINNING="none (BENCH_PIN=$PIN, nproc=$NCPU)"
fi

# ---------------------------------------------------------------- backend
TMP=$(mktemp -d "${TMPDIR:-/tmp}/levee-loadgen.XXXXXX")
chmod 755 "$TMP"
BACKEND_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $BACKEND_PID ]] && kill -0 "$BACKEND_PID" 2>/dev/null; then
        kill -TERM "$BACKEND_PID" 2>/dev/null || true
        wait "$BACKEND_PID" 2>/dev/null || true
    fi
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

(exec 3<>"/dev/tcp/${BACKEND%:*}/${BACKEND#*:}") 2>/dev/null && die "$BACKEND is already in use"
mkdir -p "$TMP/tmp"
cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/tmp/body;
    proxy_temp_path $TMP/tmp/proxy;
    fastcgi_temp_path $TMP/tmp/fastcgi;
    uwsgi_temp_path $TMP/tmp/uwsgi;
    scgi_temp_path $TMP/tmp/scgi;
    server {
        listen $BACKEND;
        location / { return 200 "hello from backend\n"; }
    }
}
EOF
if [[ $BACKEND_KIND == nginx ]]; then
    "$NGINX" -t -q -p "$TMP" -e "$TMP/error.log" -c "$TMP/nginx.conf" || die "invalid nginx config"
    "${PIN_BACKEND[@]}" "$NGINX" -p "$TMP" -e "$TMP/error.log" -c "$TMP/nginx.conf" -g 'daemon off;' \
        >"$TMP/nginx.log" 2>&1 &
    BACKEND_DESC="nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), 1 worker, \`return 200\`"
else
    "${PIN_BACKEND[@]}" "$STATIC_BIN" "$BACKEND" >"$TMP/error.log" 2>&1 &
    BACKEND_DESC="bench/static_backend.rs (one thread, a fixed 200 with nginx's headers; nginx 1 worker with \`BENCH_BACKEND=nginx\`)"
fi
BACKEND_PID=$!
for _ in $(seq 100); do
    [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "$URL" || true) == 200 ]] && break
    kill -0 "$BACKEND_PID" 2>/dev/null || die "the backend exited: $(cat "$TMP/error.log")"
    sleep 0.1
done
[[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "$URL" || true) == 200 ]] || die "backend not answering"

# CPU accounting, so that a reader sees which side was the bottleneck: the backend's busy share
# (its worker's utime+stime over the run) and each client's CPU time (user+sys) per request.
CLK_TCK=$(getconf CLK_TCK)
if [[ $BACKEND_KIND == nginx ]]; then
    BACKEND_WORKER=$(pgrep -P "$BACKEND_PID" | head -1 || true)
else
    BACKEND_WORKER=$BACKEND_PID
fi
backend_ticks() {
    [[ -n $BACKEND_WORKER && -r /proc/$BACKEND_WORKER/stat ]] || { echo 0; return; }
    awk '{ print $14 + $15 }' "/proc/$BACKEND_WORKER/stat"
}
# CPU time the hypervisor gave to other guests ("steal"), and all CPU time, in ticks.
steal_ticks() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, t }' /proc/stat; }
STEALS=()
# measured CMD...: runs CMD; sets CLIENT_CPU_S (its user+sys seconds, from bash's `times` in a
# subshell) and BACKEND_BUSY (the backend's CPU share in % over DURATION_S); appends the
# machine's steal share over the run to STEALS.
measured() {
    local t0 t1 s0 s1
    t0=$(backend_ticks)
    s0=$(steal_ticks)
    ( "$@"; times >"$TMP/times" )
    t1=$(backend_ticks)
    s1=$(steal_ticks)
    STEALS+=("$(python3 -c "a, b = map(int, '$s0'.split()); c, d = map(int, '$s1'.split()); print(round((c - a) / max(d - b, 1) * 100))")%")
    CLIENT_CPU_S=$(awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] }; printf "%.3f", n }' "$TMP/times")
    BACKEND_BUSY=$(python3 -c "print(round(($t1 - $t0) / $CLK_TCK / $DURATION_S * 100))")
}
# cpu_per_request CPU_S RPS: client CPU microseconds per request
cpu_per_request() { python3 -c "print(f'{$1 / max($2 * $DURATION_S, 1) * 1e6:.2f}')"; }

json_field() { # file python-expression-on-s (the first scenario)
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); s=d["scenarios"][0]; print(eval(sys.argv[2]))' "$1" "$2"
}

# ---------------------------------------------------------------- closed model
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "warm-up (wrk, 2s)"
"${PIN_CLIENT[@]}" "$WRK" -t"$THREADS" -c"$CONNS" -d2s "$URL" >/dev/null

# Rounds alternate the tools, so that other work on the machine hits them alike; each tool's
# best and median round are reported.
LEVEE_RUNS=(); WRK_RUNS=(); OHA_RUNS=(); LEVEE_P99S=(); WRK_P99S=(); OHA_P99S=(); LEVEE_ERR=0
LEVEE_CPU=(); WRK_CPU=(); OHA_CPU=(); LEVEE_BB=(); WRK_BB=(); OHA_BB=()
closed_levee() {
    log "round $round/$ROUNDS: levee loadtest -c $CONNS --threads $THREADS -d $DURATION"
    measured "${PIN_CLIENT[@]}" "$LEVEE_BIN" loadtest "$URL" -c "$CONNS" --threads "$THREADS" -d "$DURATION" -q \
        --json "$TMP/levee-closed.json" >"$TMP/levee-closed.txt"
    LEVEE_RUNS+=("$(json_field "$TMP/levee-closed.json" 'round(s["rps"])')")
    LEVEE_CPU+=("$(cpu_per_request "$CLIENT_CPU_S" "${LEVEE_RUNS[-1]}")"); LEVEE_BB+=("$BACKEND_BUSY")
    LEVEE_P99S+=("$(json_field "$TMP/levee-closed.json" 'round(s["latency"]["p99_ms"], 3)')")
    LEVEE_ERR=$(( LEVEE_ERR + $(json_field "$TMP/levee-closed.json" 's["failures"]') ))
}
closed_wrk() {
    log "round $round/$ROUNDS: wrk -t$THREADS -c$CONNS -d$DURATION --latency"
    measured "${PIN_CLIENT[@]}" "$WRK" -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$URL" >"$TMP/wrk.txt"
    WRK_RUNS+=("$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$TMP/wrk.txt")")
    WRK_CPU+=("$(cpu_per_request "$CLIENT_CPU_S" "${WRK_RUNS[-1]}")"); WRK_BB+=("$BACKEND_BUSY")
    WRK_P99S+=("$(awk '$1 == "99%" { v=$2; n=v; sub(/[a-z]+$/,"",n); u=v; sub(/^[0-9.]+/,"",u);
        f = (u=="us") ? 0.001 : (u=="s") ? 1000 : 1; printf "%.3f", n*f }' "$TMP/wrk.txt")")
}
closed_oha() {
    log "round $round/$ROUNDS: oha -c $CONNS -z $DURATION (pinned to the same CPUs)"
    measured "${PIN_CLIENT[@]}" "$OHA" -c "$CONNS" -z "$DURATION" --no-tui --output-format json "$URL" \
        >"$TMP/oha.json" 2>"$TMP/oha.err"
    OHA_RUNS+=("$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["summary"]["requestsPerSec"]))' "$TMP/oha.json")")
    OHA_CPU+=("$(cpu_per_request "$CLIENT_CPU_S" "${OHA_RUNS[-1]}")"); OHA_BB+=("$BACKEND_BUSY")
    OHA_P99S+=("$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["latencyPercentiles"]["p99"]*1000, 3))' "$TMP/oha.json")")
}
# levee and wrk are measured back to back in every round, levee first in odd rounds and last in
# even ones, so that their paired ratio compares the two on nearly the same machine.
ORDER=()
for round in $(seq "$ROUNDS"); do
    if (( round % 2 )); then tools=(levee wrk oha); else tools=(oha wrk levee); fi
    ORDER+=("${tools[*]}")
    for tool in "${tools[@]}"; do "closed_$tool"; done
done
best() { printf '%s\n' "$@" | sort -n | tail -1; }
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
LEVEE_RPS=$(best "${LEVEE_RUNS[@]}"); WRK_RPS=$(best "${WRK_RUNS[@]}"); OHA_RPS=$(best "${OHA_RUNS[@]}")
LEVEE_MED=$(median "${LEVEE_RUNS[@]}"); WRK_MED=$(median "${WRK_RUNS[@]}"); OHA_MED=$(median "${OHA_RUNS[@]}")
LEVEE_P99=$(median "${LEVEE_P99S[@]}"); WRK_P99=$(median "${WRK_P99S[@]}"); OHA_P99=$(median "${OHA_P99S[@]}")
LEVEE_CPU_MED=$(median "${LEVEE_CPU[@]}"); WRK_CPU_MED=$(median "${WRK_CPU[@]}"); OHA_CPU_MED=$(median "${OHA_CPU[@]}")
LEVEE_BB_MED=$(median "${LEVEE_BB[@]}"); WRK_BB_MED=$(median "${WRK_BB[@]}"); OHA_BB_MED=$(median "${OHA_BB[@]}")

if [[ $OPEN_REF == round ]]; then
    MAX_RPS=
    MAX_WHAT="levee's closed-model rate with the same C, measured just before in the round"
elif [[ $OPEN_REF == best ]]; then
    MAX_RPS=$(printf '%s\n' "$LEVEE_RPS" "$WRK_RPS" "$OHA_RPS" | sort -n | tail -1)
    MAX_WHAT="the highest closed-model round"
else
    MAX_RPS=$(printf '%s\n' "$LEVEE_MED" "$WRK_MED" "$OHA_MED" | sort -n | tail -1)
    MAX_WHAT="the highest median closed-model rate of the tools"
fi
RATIO_WRK=$(python3 -c "print(f'{$LEVEE_RPS / max($WRK_RPS, 1):.2f}')")
RATIO_OHA=$(python3 -c "print(f'{$LEVEE_RPS / max($OHA_RPS, 1):.2f}')")
RATIO_WRK_MED=$(python3 -c "print(f'{$LEVEE_MED / max($WRK_MED, 1):.2f}')")
PAIRED_WRK=$(python3 bench/paired.py "levee/wrk requests/s" 1.0 "${LEVEE_RUNS[*]}" "${WRK_RUNS[*]}")
PAIRED_OHA=$(python3 bench/paired.py "levee/oha requests/s" 1.0 "${LEVEE_RUNS[*]}" "${OHA_RUNS[*]}")
# Requests one core could generate, 1 / (client CPU per request): wrk's CPU per request over
# levee's, so > 1 means levee needs less CPU for each request than wrk.
PAIRED_CAP=$(python3 bench/paired.py "requests a core can generate (1 / client CPU per request), levee/wrk" 1.0 "${WRK_CPU[*]}" "${LEVEE_CPU[*]}")

# ---------------------------------------------------------------- open model
# Each open round measures, for each C, levee's closed-model maximum with C connections at that
# moment (BENCH_OPEN_REF=round), then runs the open rows of that C at their shares of it (80%
# first, closest to its reference): a requested rate is a share of what the machine gave just
# before with the same connections, not of a figure from minutes earlier (this machine's speed
# drifts by 20-40% over a run). The order of C reverses every other round.
declare -A O_REQ O_ACH O_ERR O_P99 O_P99U O_FAIL O_OPENED O_CPU O_BB O_REFS
OPEN_KEYS=()
for oc in $OPEN_CONNS; do for pct in 50 80; do OPEN_KEYS+=("$oc:$pct"); done; done
for oround in $(seq "$OPEN_ROUNDS"); do
    conns=($OPEN_CONNS)
    (( oround % 2 )) || conns=($(printf '%s\n' $OPEN_CONNS | tac))
    for oc in "${conns[@]}"; do
        if [[ $OPEN_REF == round ]]; then
            log "open round $oround/$OPEN_ROUNDS: the closed-model maximum now (levee loadtest -c $oc)"
            measured "${PIN_CLIENT[@]}" "$LEVEE_BIN" loadtest "$URL" -c "$oc" --threads "$THREADS" -d "$DURATION" -q \
                --json "$TMP/levee-ref.json" >/dev/null
            ref=$(json_field "$TMP/levee-ref.json" 'round(s["rps"])')
        else
            ref=$MAX_RPS
        fi
        O_REFS[$oc]+="$ref "
        for pct in 80 50; do
            key=$oc:$pct
            rate=$(( ref * pct / 100 ))
            log "open round $oround/$OPEN_ROUNDS: levee loadtest --rate $rate -c $oc ($pct% of $ref)"
            measured "${PIN_CLIENT[@]}" "$LEVEE_BIN" loadtest "$URL" --rate "$rate" -c "$oc" --threads "$THREADS" \
                -d "$DURATION" -q --json "$TMP/levee-open.json" >/dev/null
            # Achieved rate: responses over the scenario's real duration (first send to last
            # response); a generator that falls behind its schedule stretches it, and unsent
            # requests are failures.
            read -r ach err p99 p99u fail opened cpu < <(python3 - "$TMP/levee-open.json" "$rate" "$CLIENT_CPU_S" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["scenarios"][0]
rate = float(sys.argv[2])
achieved = s["responses"] / s["duration_s"]
print(f"{achieved:.1f} {(achieved - rate) / rate * 100:+.2f} {s['latency']['p99_ms']:.3f} "
      f"{s['latency_uncorrected']['p99_ms']:.3f} {s['failures']} {s['connections_opened']} "
      f"{float(sys.argv[3]) / max(s['requests'], 1) * 1e6:.2f}")
PY
)
            O_REQ[$key]+="$rate "; O_ACH[$key]+="$ach "; O_ERR[$key]+="$err% "; O_P99[$key]+="$p99 "
            O_P99U[$key]+="$p99u "; O_FAIL[$key]+="$fail "; O_OPENED[$key]+="$opened "
            O_CPU[$key]+="$cpu "; O_BB[$key]+="$BACKEND_BUSY "
        done
    done
done
OPEN_REF_DESC=
for oc in $OPEN_CONNS; do OPEN_REF_DESC+="-c $oc: ${O_REFS[$oc]% }; "; done
OPEN_ROWS=(); OPEN_VERDICTS=()
for key in "${OPEN_KEYS[@]}"; do
    oc=${key%:*}; pct=${key#*:}
    # shellcheck disable=SC2086
    OPEN_ROWS+=("| $oc | $pct% | $(median ${O_REQ[$key]}) | $(median ${O_ACH[$key]}) | ${O_ERR[$key]% } | $(median ${O_P99[$key]}) | $(median ${O_P99U[$key]}) | $(printf '%s\n' ${O_FAIL[$key]} | awk '{ t += $1 } END { print t }') | $(median ${O_OPENED[$key]}) | $(median ${O_CPU[$key]}) | $(median ${O_BB[$key]})% |")
    OPEN_VERDICTS+=("$(python3 bench/paired.py --digits=4 "open model, -c $oc at $pct%: achieved/requested rate" 0.99 "${O_ACH[$key]}" "${O_REQ[$key]}")")
done

# ---------------------------------------------------------------- report
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

WRK_V=$("$WRK" -v 2>&1 | head -1 | awk '{print $2}' || true)
OHA_V=$("$OHA" --version 2>&1 | awk '{print $2}')
LEVEE_V=$("$LEVEE_BIN" --version | awk '{print $2}')
CPU_MODEL=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
REPORT=$(cat <<EOF
## loadgen: levee loadtest vs wrk vs oha ($(date -u '+%Y-%m-%d %H:%M UTC'))

\`$INVOCATION\` (BENCH_THREADS=$THREADS BENCH_CONNS=$CONNS BENCH_DURATION=$DURATION BENCH_ROUNDS=$ROUNDS BENCH_BACKEND=$BACKEND_KIND);
nproc $NCPU ($CPU_MODEL), kernel $(uname -r); pinning: $PINNING.
Backend: $BACKEND_DESC. wrk $WRK_V, oha $OHA_V, levee $LEVEE_V.
Load average (1, 5, 15 min) before: $LOAD_BEFORE, after: $LOAD_AFTER (other work on the machine
shows here: the figures are only comparable within one run).

Closed model, $CONNS connections, $THREADS thread(s), $ROUNDS rounds of $DURATION per tool, the
tools alternating (requests/s of every round in brackets):

| tool | command | best requests/s | median requests/s | rounds | median p99 ms | client CPU µs/request (median) | backend CPU busy (median) |
|---|---|---|---|---|---|---|---|
| levee loadtest | \`levee loadtest $URL -c $CONNS --threads $THREADS -d $DURATION\` | $LEVEE_RPS | $LEVEE_MED | ${LEVEE_RUNS[*]} | $LEVEE_P99 | $LEVEE_CPU_MED | $LEVEE_BB_MED% |
| wrk | \`wrk -t$THREADS -c$CONNS -d$DURATION $URL\` | $WRK_RPS | $WRK_MED | ${WRK_RUNS[*]} | $WRK_P99 | $WRK_CPU_MED | $WRK_BB_MED% |
| oha | \`oha -c $CONNS -z $DURATION $URL\` (pinned to $THREADS CPU(s)) | $OHA_RPS | $OHA_MED | ${OHA_RUNS[*]} | $OHA_P99 | $OHA_CPU_MED | $OHA_BB_MED% |

Client CPU: user+sys time of the tool's process (all its threads) per request; backend CPU
busy: the backend's CPU time over the run. A backend near 100% busy is the bottleneck: the
tools' requests/s then say little about the tools, and their CPU per request says more.

levee/wrk requests/s, best rounds: **${RATIO_WRK}x** (medians: ${RATIO_WRK_MED}x); levee/oha, best
rounds: **${RATIO_OHA}x**. Failed requests in levee's rounds: $LEVEE_ERR.

$PAIRED_WRK
$PAIRED_OHA
$PAIRED_CAP

(Paired by round: levee's requests/s over the other tool's in the same round, measured back to
back; the interval is the sign test's for the median of those ratios (\`bench/paired.py\`), so
it holds whatever the noise's distribution. "undecided": the interval contains the target.
While the backend is the bottleneck, requests/s cannot show which generator is faster; the
third line can: CPU time per request counts only the time the tool ran, not the time it waited
for the backend, so 1 / CPU per request is the rate one core would give the tool.)

Open model (\`levee loadtest $URL --rate R -c C --threads $THREADS -d $DURATION\`, C the most
connections: $OPEN_CONNS), $OPEN_ROUNDS rounds, R a share of $MAX_WHAT (BENCH_OPEN_REF=$OPEN_REF;
requests/s in the rounds: ${OPEN_REF_DESC%; })
achieved = responses / the run's real duration (first send to last response); "opened":
connections the run opened (it starts with about 10 ms worth of the rate and adds one when a
request is claimed late, up to C; idle connections beyond 2 ms worth of requests wait parked,
the one freed last taking the next request):

| -c | share | requested/s (median) | achieved/s (median) | error of each round | p99 ms corrected (median) | p99 ms uncorrected (median) | failures (all rounds) | opened (median) | client CPU µs/request (median) | backend CPU busy (median) |
|---|---|---|---|---|---|---|---|---|---|---|
$(printf '%s\n' "${OPEN_ROWS[@]}")

$(printf '%s\n' "${OPEN_VERDICTS[@]}")

(Target: achieved within 1% of requested, i.e. achieved/requested >= 0.99: "met" when the whole
interval of the median round is at or above it. Above about 20k requests/s the sender polls
instead of sleeping between requests, so the client CPU per request then counts the polling.)

CPU steal (time the hypervisor gave to other guests, share of this machine's CPU time) during
each measurement, in order (closed rounds, the tools in the order measured: $(printf '%s; ' "${ORDER[@]}")then the open rows):
${STEALS[*]}. Steal above a few % means the machine itself was slower during that measurement.
EOF
)
printf '%s\n' "$REPORT"
if [[ $WRITE == 1 ]]; then
    RESULTS=bench/RESULTS.md
    [[ -f $RESULTS ]] || printf '# Benchmark results\n' >"$RESULTS"
    printf '\n%s\n' "$REPORT" >>"$RESULTS"
    log "appended to $RESULTS"
fi
