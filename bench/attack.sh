#!/usr/bin/env bash
# bench/attack.sh: the same flood plus legitimate traffic against levee, nginx and HAProxy,
# each in front of three fresh capacity-limited simulated backends with the same per-server
# cap (8 in flight), a per-source rate limit of 3 requests/s (burst 3) and a per-source
# connection limit; prints the results side by side and appends them to bench/RESULTS.md
# under an "attack" heading. See bench/README.md.
#
# Traffic (bench/flood.py, Python 3 standard library only):
#   - 50 legitimate clients (127.30.0.1-50), 2 requests/s each, keep-alive, each waiting for
#     its answer (5 s timeout), for the whole run (ATTACK_TOTAL seconds);
#   - a flood from 1,000 source addresses (127.20.x.y), 5.5 requests/s each, open model
#     (fired on schedule without waiting for answers; a source opens another connection when
#     its connections are all busy, up to 8), from ATTACK_FLOOD_START for ATTACK_FLOOD_DURATION.
# Backends: 3 x `levee backend --capacity 8 --latency 100ms --crash-above 12 --down-for 30s`,
# fresh for every proxy (pool capacity 3 x 8 / 100 ms = 240 requests/s; the flood offers
# about 5,500 requests/s, 23x that).
#
# Environment:
#   ATTACK_TARGETS="nginx haproxy levee"   which proxies, in this order
#   ATTACK_TOTAL=30 ATTACK_FLOOD_START=4 ATTACK_FLOOD_DURATION=20   seconds
#   ATTACK_FLOOD_SOURCES=1000 ATTACK_FLOOD_RATE=5.5 ATTACK_LEGIT=50 ATTACK_LEGIT_RATE=2
#   ATTACK_WRITE=1        append to bench/RESULTS.md (0: print only)
#   ATTACK_PIN=1          0: no taskset. Default: proxy + backends on CPU 0, generator on CPU 1
#   ATTACK_WAIT_IDLE=0    N: before each target wait up to N s for the machine to be <= 10% busy
#   ATTACK_NICE=-10       nice value of every process of the benchmark (proxy, backends, generator),
#                         so that other work on a shared machine (a compiler) does not starve the
#                         generator or the proxy during the ~2 minutes of the run; 0: unchanged.
#                         Negative values need root; without it the script runs at 0 and says so.
#   LEVEE_BIN=target/release/levee
#   KEEP_TMP=1            keep the temp directory (configs, logs, raw JSON)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
INVOCATION="bench/attack.sh${*:+ $*}"

TARGETS=(${ATTACK_TARGETS:-nginx haproxy levee})
TOTAL=${ATTACK_TOTAL:-30}
FLOOD_START=${ATTACK_FLOOD_START:-4}
FLOOD_DURATION=${ATTACK_FLOOD_DURATION:-20}
FLOOD_SOURCES=${ATTACK_FLOOD_SOURCES:-1000}
FLOOD_RATE=${ATTACK_FLOOD_RATE:-5.5}
LEGIT=${ATTACK_LEGIT:-50}
LEGIT_RATE=${ATTACK_LEGIT_RATE:-2}
WRITE=${ATTACK_WRITE:-1}
PIN=${ATTACK_PIN:-1}
WAIT_IDLE=${ATTACK_WAIT_IDLE:-0}
NICE=${ATTACK_NICE:--10}
LEVEE_BIN=${LEVEE_BIN:-target/release/levee}
[[ $LEVEE_BIN == /* ]] || LEVEE_BIN="$ROOT/$LEVEE_BIN"

# Equal settings for every proxy.
CAP=8               # per-server in-flight cap
RATE=3              # per-source requests/s
BURST=3
CONN_LIMIT=16       # per-source open connections
QUEUE_TIMEOUT=1     # s: longest wait for a free server (levee queue_timeout, HAProxy timeout queue)
QUEUE_SIZE=64       # levee queue_size (HAProxy: maxqueue 22 per server ~ 64 in all; nginx OSS has no queue)
MAX_CONNS=9000      # client connections per proxy (HAProxy needs ~2 descriptors per connection; hard limit here 20000)

BACKENDS=(127.0.0.1:18201 127.0.0.1:18202 127.0.0.1:18203)
PROXY_ADDR=127.0.0.1:18210
LEVEE_ADMIN=127.0.0.1:18211

log() { printf '[attack] %s\n' "$*" >&2; }
die() { printf '[attack] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
find_bin() {
    local p
    p=$(command -v "$1" 2>/dev/null) && { echo "$p"; return 0; }
    for p in /usr/sbin/$1 /usr/local/sbin/$1 /sbin/$1; do [[ -x $p ]] && { echo "$p"; return 0; }; done
    return 1
}
missing=()
for tool in nginx haproxy curl; do find_bin "$tool" >/dev/null || missing+=("$tool"); done
if (( ${#missing[@]} )); then
    log "installing missing packages: ${missing[*]}"
    SUDO=(); (( EUID == 0 )) || SUDO=(sudo)
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX=$(find_bin nginx) || die "nginx not found"
HAPROXY=$(find_bin haproxy) || die "haproxy not found"
PYTHON=$(command -v python3) || die "python3 not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "python3 >= 3.8 needed"
if [[ ! -x $LEVEE_BIN ]]; then
    log "building levee (cargo build --release)"
    cargo build --release --quiet || die "cargo build --release failed"
fi

# Descriptors: ~8,000 flood connections plus the proxies' upstream sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# The binary as it is when the run starts (a shared target/ may be rebuilt meanwhile).
LEVEE_VER=$({ "$LEVEE_BIN" --version 2>/dev/null || true; } | awk 'NR == 1 { print $NF }')
LEVEE_VER="${LEVEE_VER:-?} (binary built $(date -u -r "$LEVEE_BIN" '+%Y-%m-%d %H:%M UTC'); tree at git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ', dirty tree'))"
(( $(ulimit -n) >= 12000 )) || log "warning: ulimit -n is $(ulimit -n); the flood needs ~9000 descriptors"

NCPU=$(nproc)
if [[ $PIN == 1 ]] && (( NCPU >= 2 )) && command -v taskset >/dev/null; then
    PIN_SERVER=(taskset -c 0); PIN_CLIENT=(taskset -c 1)
    PINNING="taskset: proxy under test and the 3 backends on CPU 0, the generator on CPU 1"
else
    PIN_SERVER=(); PIN_CLIENT=(); PINNING="none (ATTACK_PIN=$PIN, nproc=$NCPU)"
fi
if [[ $NICE != 0 ]] && ! nice -n "$NICE" true 2>/dev/null; then
    log "warning: cannot run at nice $NICE (not root?); using 0"; NICE=0
fi
if [[ $NICE != 0 ]]; then
    PIN_SERVER=(nice -n "$NICE" "${PIN_SERVER[@]}"); PIN_CLIENT=(nice -n "$NICE" "${PIN_CLIENT[@]}")
    PINNING+="; every process of the benchmark at nice $NICE"
fi

# ---------------------------------------------------------------- processes
TMP=$(mktemp -d "${TMPDIR:-/tmp}/levee-attack.XXXXXX")
chmod 755 "$TMP"
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
for a in "${BACKENDS[@]}" $PROXY_ADDR $LEVEE_ADMIN; do port_free "$a" || die "$a is already in use"; done

start() { # name cmd... -> LAST_PID
    local name=$1; shift
    "$@" >"$TMP/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
wait_http() { # name url pid
    local deadline=$((SECONDS + 10))
    while (( SECONDS < deadline )); do
        kill -0 "$3" 2>/dev/null || { cat "$TMP/$1.log" >&2 || true; die "$1 exited during startup"; }
        [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "$2" || true) == 200 ]] && return 0
        sleep 0.1
    done
    cat "$TMP/$1.log" >&2 || true
    die "$1 did not answer 200 on $2 within 10s"
}

# ---------------------------------------------------------------- configs
mkdir -p "$TMP/nginx/tmp" "$TMP/haproxy" "$TMP/levee"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_timeout 60s;
    keepalive_requests 100000;
    client_body_temp_path $TMP/nginx/tmp/body;
    proxy_temp_path $TMP/nginx/tmp/proxy;
    fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
    scgi_temp_path $TMP/nginx/tmp/scgi;

    limit_req_zone \$binary_remote_addr zone=perip:16m rate=${RATE}r/s;
    limit_conn_zone \$binary_remote_addr zone=perconn:16m;
    limit_req_status 429;
    limit_conn_status 429;

    upstream web {
        least_conn;
        server ${BACKENDS[0]} max_conns=$CAP;
        server ${BACKENDS[1]} max_conns=$CAP;
        server ${BACKENDS[2]} max_conns=$CAP;
        keepalive 32;
    }
    server {
        listen $PROXY_ADDR backlog=4096;
        location / {
            limit_req zone=perip burst=$BURST nodelay;
            limit_conn perconn $CONN_LIMIT;
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
        }
    }
}
EOF
cat >"$TMP/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $MAX_CONNS

defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout queue ${QUEUE_TIMEOUT}s
    timeout http-request 10s

frontend fe
    bind $PROXY_ADDR
    maxconn $MAX_CONNS
    stick-table type ip size 1m expire 60s store http_req_rate(1s),conn_cur
    tcp-request connection track-sc0 src
    tcp-request connection reject if { sc_conn_cur(0) gt $CONN_LIMIT }
    http-request deny deny_status 429 if { sc_http_req_rate(0) gt $RATE }
    default_backend web

backend web
    balance leastconn
    server s1 ${BACKENDS[0]} maxconn $CAP maxqueue 22
    server s2 ${BACKENDS[1]} maxconn $CAP maxqueue 22
    server s3 ${BACKENDS[2]} maxconn $CAP maxqueue 22
EOF
cat >"$TMP/levee/levee.toml" <<EOF
[listener]
bind = "$PROXY_ADDR"
max_connections = $MAX_CONNS

[admin]
bind = "$LEVEE_ADMIN"

[access_log]
enabled = false

[pools.web]
servers = ["${BACKENDS[0]}", "${BACKENDS[1]}", "${BACKENDS[2]}"]
max_concurrency = $CAP
queue_size = $QUEUE_SIZE
queue_timeout = "${QUEUE_TIMEOUT}s"

[pools.web.health_check]
path = "/health"

[shield]
rate = $RATE
burst = $BURST
max_connections_per_client = $CONN_LIMIT

[shield.bans]
threshold = 5
weight_rate_limited = 2
duration = "5m"

[shield.attack]
under_attack_rate_factor = 1.0
EOF
"$NGINX" -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" || die "invalid nginx config"
"$HAPROXY" -c -q -f "$TMP/haproxy/haproxy.cfg" || die "invalid HAProxy config"
"$LEVEE_BIN" check --config "$TMP/levee/levee.toml" >/dev/null || die "invalid levee config"

# ---------------------------------------------------------------- runs
all_jiffies() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
busy_1s() {
    local b0 t0 b1 t1
    read -r b0 t0 < <(all_jiffies); sleep 1; read -r b1 t1 < <(all_jiffies)
    echo $(( (b1 - b0) * 100 / ((t1 - t0) > 0 ? (t1 - t0) : 1) ))
}
wait_idle() {
    (( WAIT_IDLE > 0 )) || return 0
    local deadline=$((SECONDS + WAIT_IDLE)) b
    while (( SECONDS < deadline )); do
        b=$(busy_1s); (( b <= 10 )) && return 0
        log "machine ${b}% busy, waiting for idle (ATTACK_WAIT_IDLE=$WAIT_IDLE)"; sleep 4
    done
    log "warning: machine still busy after ${WAIT_IDLE}s; measuring anyway"
}

declare -A LABEL=([nginx]="nginx (1 worker)" [haproxy]="HAProxy (1 thread)" [levee]="levee (--threads 1)")
JSONS=()
for t in "${TARGETS[@]}"; do
    [[ -n ${LABEL[$t]:-} ]] || die "unknown target $t"
    wait_idle
    log "$t: fresh backends"
    BPIDS=()
    for i in 0 1 2; do
        start "backend$i-$t" "${PIN_SERVER[@]}" "$LEVEE_BIN" backend --listen "${BACKENDS[$i]}" \
            --capacity "$CAP" --latency 100ms --crash-above 12 --down-for 30s
        BPIDS+=("$LAST_PID")
    done
    for i in 0 1 2; do wait_http "backend$i-$t" "http://${BACKENDS[$i]}/health" "${BPIDS[$i]}"; done
    case $t in
        nginx) start nginx "${PIN_SERVER[@]}" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" \
                   -c "$TMP/nginx/nginx.conf" -g 'daemon off;' ;;
        haproxy) start haproxy "${PIN_SERVER[@]}" "$HAPROXY" -db -f "$TMP/haproxy/haproxy.cfg" ;;
        levee) start levee "${PIN_SERVER[@]}" "$LEVEE_BIN" serve --config "$TMP/levee/levee.toml" --threads 1 ;;
    esac
    PPID_T=$LAST_PID
    wait_http "$t" "http://$PROXY_ADDR/health" "$PPID_T"
    sleep 1
    log "$t: legit ${LEGIT}x${LEGIT_RATE}/s for ${TOTAL}s, flood ${FLOOD_SOURCES}x${FLOOD_RATE}/s from ${FLOOD_START}s for ${FLOOD_DURATION}s"
    "${PIN_CLIENT[@]}" "$PYTHON" "$ROOT/bench/flood.py" attack --target "$PROXY_ADDR" \
        --label "${LABEL[$t]}" --out "$TMP/$t.json" --total "$TOTAL" \
        --flood-start "$FLOOD_START" --flood-duration "$FLOOD_DURATION" \
        --flood-sources "$FLOOD_SOURCES" --flood-rate "$FLOOD_RATE" \
        --legit "$LEGIT" --legit-rate "$LEGIT_RATE" \
        --pids "$PPID_T" --own-pids "$(IFS=,; echo "${BPIDS[*]}")" || die "$t: flood.py failed"
    alive=1; kill -0 "$PPID_T" 2>/dev/null || { alive=0; log "warning: $t exited during the run"; tail -20 "$TMP/$t.log" >&2; }
    for i in 0 1 2; do
        curl -s -m 2 "http://${BACKENDS[$i]}/stats" >"$TMP/$t.backend$i.json" || echo '{}' >"$TMP/$t.backend$i.json"
    done
    extra=""
    if [[ $t == levee ]]; then
        curl -s -m 5 "http://$LEVEE_ADMIN/metrics" >"$TMP/levee.metrics" || true
        extra=$(grep -E '^levee_(rejections_total|shield_[a-z_]+|bans_total)' "$TMP/levee.metrics" | grep -v ' 0$' | tr '\n' ';' || true)
    fi
    "$PYTHON" - "$TMP/$t.json" "$alive" "$extra" "$TMP/$t".backend{0,1,2}.json <<'EOF'
import json, sys
path, alive, extra, *bs = sys.argv[1:]
r = json.load(open(path))
r["backends"] = []
for b in bs:
    try:
        r["backends"].append(json.load(open(b)))
    except Exception:
        r["backends"].append({})
r["proxy_survived"] = alive == "1"
r["extra"] = extra
json.dump(r, open(path, "w"), indent=1)
EOF
    [[ $t == levee && -n $extra ]] && log "levee metrics: $extra"
    stop_pid "$PPID_T"
    for p in "${BPIDS[@]}"; do stop_pid "$p"; done
    JSONS+=("$TMP/$t.json")
    sleep 2
done

# ---------------------------------------------------------------- report
TABLE=$("$PYTHON" "$ROOT/bench/flood.py" table "${JSONS[@]}")
VERDICT=$("$PYTHON" - "${JSONS[@]}" <<'EOF'
import json, sys
rs = {json.load(open(f))["label"].split()[0]: json.load(open(f)) for f in sys.argv[1:]}
lv = rs.get("levee")
peers = [r for k, r in rs.items() if k != "levee"]
if lv is None or not peers:
    print("- target check: needs levee and at least one peer"); sys.exit()
inf = float("inf")
def p99(r, failures_inf):
    v = r["legit"]["p99_failures_inf_ms"] if failures_inf else r["legit"]["p99_ms"]
    return inf if v is None else v
sr = lv["legit"]["success_rate"]
for failures_inf, what in ((False, "p99 over all attempts (a failure counts at the time it took)"),
                           (True, "p99 where a failed request counts as never served")):
    best = min(p99(r, failures_inf) for r in peers)
    mine = p99(lv, failures_inf)
    ok = mine <= best / 2 and sr >= 0.999
    ratio = "n/a" if best == inf else f"{mine / best:.2f}"
    print(f"- target (levee legit p99 <= half the best peer's, success >= 99.9%), {what}: "
          f"{'MET' if ok else 'NOT MET'}: levee {mine:.1f} ms vs best peer {best:.1f} ms (ratio {ratio}), "
          f"levee success {sr * 100:.2f}%")
EOF
)
echo
echo "$TABLE"
echo
echo "$VERDICT"

if [[ $WRITE == 1 ]]; then
    NGINX_VER=$("$NGINX" -v 2>&1 | sed 's/^nginx version: nginx\///')
    HAPROXY_VER=$("$HAPROXY" -v 2>&1 | awk 'NR == 1 { print $3 }')
    CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    ENV_PREFIX=""
    for v in ATTACK_NICE ATTACK_TARGETS ATTACK_TOTAL ATTACK_FLOOD_START ATTACK_FLOOD_DURATION ATTACK_FLOOD_SOURCES \
             ATTACK_FLOOD_RATE ATTACK_LEGIT ATTACK_LEGIT_RATE ATTACK_PIN ATTACK_WAIT_IDLE LEVEE_BIN; do
        [[ -z ${!v:-} ]] || ENV_PREFIX+="$v=${!v} "
    done
    {
        echo
        echo "## attack: $(date -u '+%Y-%m-%d %H:%M UTC'), nproc $NCPU"
        echo
        echo "- machine: $NCPU cores (\`nproc\`), ${CPU_MODEL:-unknown CPU}, $(uname -sr); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "- versions: nginx $NGINX_VER, HAProxy $HAPROXY_VER, Python $("$PYTHON" -c 'import platform; print(platform.python_version())'), levee $LEVEE_VER"
        echo "- command: \`${ENV_PREFIX}$INVOCATION\`"
        echo "- pinning: $PINNING."
        echo "- backends (fresh for each proxy): 3 x \`levee backend --capacity $CAP --latency 100ms --crash-above 12 --down-for 30s\`"
        echo "  (pool capacity 3 x $CAP / 100 ms = 240 req/s)."
        echo "- traffic (\`bench/flood.py attack\`): $LEGIT legitimate clients (127.30.0.x) at $LEGIT_RATE req/s each for ${TOTAL}s,"
        echo "  keep-alive, waiting for each answer (5 s timeout; latency of every attempt, failures included);"
        echo "  flood from $FLOOD_SOURCES sources (127.20.x.y) at $FLOOD_RATE req/s each, open model (up to 8 connections per source),"
        echo "  from t=${FLOOD_START}s for ${FLOOD_DURATION}s."
        echo "- equal settings: per-server cap $CAP; per-source rate $RATE/s, burst $BURST; per-source connections $CONN_LIMIT;"
        echo "  wait for a free server at most ${QUEUE_TIMEOUT}s (levee queue $QUEUE_SIZE, HAProxy maxqueue 22 x 3; nginx OSS has no queue);"
        echo "  one core each (nginx 1 worker, HAProxy nbthread 1, levee --threads 1); least-connections balancing; no access logs."
        echo "  - nginx: \`limit_req_zone \$binary_remote_addr rate=${RATE}r/s\` + \`limit_req burst=$BURST nodelay\`, \`limit_conn $CONN_LIMIT\`,"
        echo "    \`limit_req_status/limit_conn_status 429\`, \`upstream { least_conn; server ... max_conns=$CAP; keepalive 32; }\`."
        echo "  - HAProxy: \`stick-table type ip size 1m expire 60s store http_req_rate(1s),conn_cur\`, \`tcp-request connection track-sc0 src\`,"
        echo "    \`tcp-request connection reject if { sc_conn_cur(0) gt $CONN_LIMIT }\`, \`http-request deny deny_status 429 if { sc_http_req_rate(0) gt $RATE }\`,"
        echo "    \`balance leastconn\`, \`server ... maxconn $CAP maxqueue 22\`, \`timeout queue ${QUEUE_TIMEOUT}s\`, frontend \`maxconn $MAX_CONNS\`."
        echo "  - levee: \`max_concurrency = $CAP\`, \`queue_size = $QUEUE_SIZE\`, \`queue_timeout = \"${QUEUE_TIMEOUT}s\"\`, health checks on /health;"
        echo "    \`[shield] rate = $RATE, burst = $BURST, max_connections_per_client = $CONN_LIMIT\`,"
        echo "    \`[shield.bans] threshold = 5, weight_rate_limited = 2, duration = \"5m\"\`, \`[shield.attack] under_attack_rate_factor = 1.0\`,"
        echo "    \`[access_log] enabled = false\`, \`max_connections = $MAX_CONNS\`."
        echo "- time until the flood was blocked: flood requests are grouped in 0.5 s bins by the time they were sent;"
        echo "  blocked = answered 403 or 429, or connection refused, reset or closed without an answer."
        echo "  The time is the end of the first bin from which every bin until the flood's end has >= 95% blocked"
        echo "  (\"never\" if the last bins do not). 503s (shedding) and timeouts do not count as blocked."
        echo "- CPU: utime+stime of the proxy (nginx: master + worker) from /proc/PID/stat, every 0.5 s; RSS: VmRSS summed the same way."
        echo "  \"other processes\": CPU used during the run by processes other than the proxy, the backends and the generator, in % of the whole machine."
        echo "  \"proxy waiting for a CPU\": run-queue wait of the proxy's threads (/proc/PID/task/*/schedstat) during the flood, in % of its"
        echo "  wall time; more than a few % means the proxy was starved by other work on the machine and its latencies are skewed."
        echo
        echo "$TABLE"
        echo
        echo "$VERDICT"
        for t in "${TARGETS[@]}"; do
            [[ $t == levee ]] && echo "- levee metrics after the run (non-zero): $(grep -E '^levee_(rejections_total|shield_)' "$TMP/levee.metrics" 2>/dev/null | grep -v ' 0$' | sed 's/^levee_//' | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
        done
    } >>"$ROOT/bench/RESULTS.md"
    log "appended to bench/RESULTS.md"
fi
