#!/usr/bin/env bash
# bench/proxy.sh: compare levee with nginx and HAProxy as HTTP/1.1 reverse
# proxies in front of the same static backend, measured with wrk.
#
# Every proxy runs on one core/thread (levee --threads 1, nginx 1 worker,
# HAProxy nbthread 1) and balances round robin over two backend servers
# with keep-alive to the backends. See bench/README.md.
#
# Environment:
#   BENCH_THREADS=1      wrk threads (-t)
#   BENCH_CONNS=50       wrk connections (-c)
#   BENCH_DURATION=5s    wrk measured duration (-d); a 2s warm-up precedes it
#   BENCH_WARMUP=2s      warm-up duration (BENCH_WARMUP=0 skips it)
#   BENCH_ROUNDS=10      rounds: every target measured once per round, levee between nginx
#                        and HAProxy; the table shows each target's median round, the
#                        "paired by round" lines the ratios of back-to-back measurements
#                        (6 rounds or more give a 95% interval)
#   BENCH_WAIT_IDLE=0    N: before each measurement wait up to N s for an idle machine
#   BENCH_RETRIES=2      re-measure a target up to N times when other processes used
#                        more than 5% of the machine during its measurement
#   BENCH_WRITE=1        append the results to bench/RESULTS.md (0: don't)
#   BENCH_SKIP_LEVEE=0   1: leave levee out (nginx, HAProxy, backend only)
#   BENCH_PIN=1          0: no CPU pinning (taskset)
#   BENCH_PROXY_CPU=0    CPU for the proxy under test
#   BENCH_BACKEND_CPU=0  CPU for the backend nginx
#   BENCH_CLIENT_CPU=1   CPU for wrk
#   LEVEE_BIN=target/release/levee   (relative paths are from the repo root)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

INVOCATION="bench/proxy.sh${*:+ $*}"
THREADS=${BENCH_THREADS:-1}
CONNS=${BENCH_CONNS:-50}
DURATION=${BENCH_DURATION:-5s}
WARMUP=${BENCH_WARMUP:-2s}
ROUNDS=${BENCH_ROUNDS:-10}
WAIT_IDLE=${BENCH_WAIT_IDLE:-0}
RETRIES=${BENCH_RETRIES:-2}
WRITE=${BENCH_WRITE:-1}
SKIP_LEVEE=${BENCH_SKIP_LEVEE:-0}
PIN=${BENCH_PIN:-1}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
BACKEND_CPU=${BENCH_BACKEND_CPU:-0}
LEVEE_BIN_DEFAULT=target/release/levee
LEVEE_BIN=${LEVEE_BIN:-$LEVEE_BIN_DEFAULT}

BACKEND1=127.0.0.1:18081
BACKEND2=127.0.0.1:18082
NGINX_ADDR=127.0.0.1:18090
HAPROXY_ADDR=127.0.0.1:18091
LEVEE_ADDR=127.0.0.1:18092
LEVEE_ADMIN_ADDR=127.0.0.1:18093

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# Duration in wrk syntax (10, 10s, 2m, 1h) -> whole seconds.
to_seconds() {
    local d=$1
    case $d in
        *h) echo $(( ${d%h} * 3600 )) ;;
        *m) echo $(( ${d%m} * 60 )) ;;
        *s) echo $(( ${d%s} )) ;;
        *) echo $(( d )) ;;
    esac
}
DURATION_S=$(to_seconds "$DURATION") || die "bad BENCH_DURATION=$DURATION"
WARMUP_S=$(to_seconds "$WARMUP") || die "bad BENCH_WARMUP=$WARMUP"
[[ $THREADS =~ ^[0-9]+$ && $CONNS =~ ^[0-9]+$ && $WAIT_IDLE =~ ^[0-9]+$ && $RETRIES =~ ^[0-9]+$ && $ROUNDS =~ ^[1-9][0-9]*$ ]] ||
    die "BENCH_THREADS, BENCH_CONNS, BENCH_WAIT_IDLE, BENCH_RETRIES, BENCH_ROUNDS must be integers (ROUNDS >= 1)"
(( DURATION_S > 0 )) || die "BENCH_DURATION must be > 0"

# ---------------------------------------------------------------- tools
find_bin() { # name -> path (also looks in sbin, not in a normal user's PATH)
    local p
    p=$(command -v "$1" 2>/dev/null) && { echo "$p"; return 0; }
    for p in /usr/sbin/$1 /usr/local/sbin/$1 /sbin/$1; do
        [[ -x $p ]] && { echo "$p"; return 0; }
    done
    return 1
}

missing=()
for tool in nginx haproxy wrk curl; do
    find_bin "$tool" >/dev/null || missing+=("$tool")
done
if (( ${#missing[@]} )); then
    log "installing missing packages: ${missing[*]}"
    SUDO=()
    if (( EUID != 0 )); then
        command -v sudo >/dev/null || die "need root or sudo to install ${missing[*]}"
        SUDO=(sudo)
    fi
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} yourself"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX=$(find_bin nginx) || die "nginx not found"
HAPROXY=$(find_bin haproxy) || die "haproxy not found"
WRK=$(find_bin wrk) || die "wrk not found"
command -v curl >/dev/null || die "curl not found"

NCPU=$(nproc)
if [[ $PIN == 1 ]] && (( NCPU >= 2 )) && command -v taskset >/dev/null &&
   (( PROXY_CPU < NCPU && CLIENT_CPU < NCPU && BACKEND_CPU < NCPU )); then
    PIN_PROXY=(taskset -c "$PROXY_CPU")
    PIN_CLIENT=(taskset -c "$CLIENT_CPU")
    PIN_BACKEND=(taskset -c "$BACKEND_CPU")
    PINNING="taskset: proxy under test on CPU $PROXY_CPU, backend nginx on CPU $BACKEND_CPU, wrk on CPU $CLIENT_CPU"
else
    PIN_PROXY=()
    PIN_CLIENT=()
    PIN_BACKEND=()
    PINNING="none (BENCH_PIN=$PIN, nproc=$NCPU)"
fi

if [[ $SKIP_LEVEE != 1 ]]; then
    [[ $LEVEE_BIN == /* ]] || LEVEE_BIN="$ROOT/$LEVEE_BIN"
    if [[ ! -x $LEVEE_BIN ]]; then
        [[ $LEVEE_BIN == "$ROOT/$LEVEE_BIN_DEFAULT" ]] ||
            die "LEVEE_BIN=$LEVEE_BIN does not exist"
        log "building levee (cargo build --release)"
        cargo build --release --quiet || die "cargo build --release failed"
        [[ -x $LEVEE_BIN ]] || die "$LEVEE_BIN still missing after cargo build"
    fi
    levee_help=$("$LEVEE_BIN" serve --help 2>&1 || true)
    [[ $levee_help == *--threads* ]] ||
        die "$LEVEE_BIN serve has no --threads option (or BENCH_SKIP_LEVEE=1)"
fi

# ---------------------------------------------------------------- processes
TMP=$(mktemp -d "${TMPDIR:-/tmp}/levee-bench.XXXXXX")
chmod 755 "$TMP" # nginx workers may run as an unprivileged user
PIDS=()

stop_pid() { # pid: TERM, wait up to 5s, then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    [[ -z ${WRK_PID:-} ]] || stop_pid "$WRK_PID"
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() { ! (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }
for a in $BACKEND1 $BACKEND2 $NGINX_ADDR $HAPROXY_ADDR $LEVEE_ADDR $LEVEE_ADMIN_ADDR; do
    port_free "$a" || die "$a is already in use"
done

start() { # name cmd...: start in background, log to $TMP/name.log, sets LAST_PID
    local name=$1; shift
    "$@" >"$TMP/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

wait_http() { # name addr pid: wait (10s max) until GET / answers 200
    local name=$1 addr=$2 pid=$3 deadline=$((SECONDS + 10))
    while (( SECONDS < deadline )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$TMP/$name.log" >&2 || true
            die "$name exited during startup"
        fi
        if [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://$addr/" || true) == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    cat "$TMP/$name.log" >&2 || true
    die "$name did not answer 200 on $addr within 10s"
}

nginx_common() { # prefix dir: the main-context and http-context boilerplate
    local dir=$1
    mkdir -p "$dir/tmp"
    cat <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    keepalive_timeout 65s;
    keepalive_requests 100000;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
EOF
}

start_nginx() { # name conf-file
    local name=$1 conf=$2 dir
    dir=$(dirname "$conf")
    "$NGINX" -t -q -p "$dir" -e "$dir/error.log" -c "$conf" ||
        die "$name: invalid nginx config $conf"
    start "$name" "${NGINX_PIN[@]}" "$NGINX" -p "$dir" -e "$dir/error.log" -c "$conf" -g 'daemon off;'
}

# Backend: one nginx worker, two servers, static 200.
mkdir -p "$TMP/backend"
{
    nginx_common "$TMP/backend"
    for a in $BACKEND1 $BACKEND2; do
        cat <<EOF
    server {
        listen $a;
        location / { return 200 "hello from backend\n"; }
    }
EOF
    done
    echo "}"
} >"$TMP/backend/nginx.conf"

# nginx as proxy.
mkdir -p "$TMP/nginx"
{
    nginx_common "$TMP/nginx"
    # The headers levee adds to every request are added here too: X-Forwarded-For/-Proto/-Host,
    # and X-Request-Id (the client's, or a new one) passed on and returned to the client.
    cat <<'EOF'
    map $http_x_request_id $levee_like_request_id {
        default $http_x_request_id;
        ""      $request_id;
    }
EOF
    cat <<EOF
    upstream web {
        server $BACKEND1;
        server $BACKEND2;
        keepalive 64;
        keepalive_requests 100000;
    }
    server {
        listen $NGINX_ADDR;
        location / {
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header X-Request-Id \$levee_like_request_id;
            add_header X-Request-Id \$levee_like_request_id always;
        }
    }
}
EOF
} >"$TMP/nginx/nginx.conf"

# HAProxy.
mkdir -p "$TMP/haproxy"
cat >"$TMP/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend fe
    bind $HAPROXY_ADDR
    # The headers levee adds to every request: X-Forwarded-For/-Proto/-Host, and X-Request-Id
    # (the client's, or a new one) passed on and returned to the client.
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    unique-id-format %[rand,hex,bytes(8,8)]%[rand,hex,bytes(8,8)]%[rand,hex,bytes(8,8)]%[rand,hex,bytes(8,8)]
    http-request set-header X-Request-Id %[unique-id] unless { req.hdr(x-request-id) -m found }
    http-request set-var(txn.request_id) req.hdr(x-request-id)
    http-response set-header X-Request-Id %[var(txn.request_id)]
    default_backend web

backend web
    balance roundrobin
    server s1 $BACKEND1
    server s2 $BACKEND2
EOF

# levee.
mkdir -p "$TMP/levee"
cat >"$TMP/levee/levee.toml" <<EOF
[listener]
bind = "$LEVEE_ADDR"

[admin]
bind = "$LEVEE_ADMIN_ADDR"

[access_log]
enabled = false

# Equivalent to the peers' configs, which have no per-client limiter: one wrk client sending
# 50k requests/s would otherwise be (rightly) rate-limited and banned by the shield.
[shield]
enabled = false

[pools.web]
servers = ["$BACKEND1", "$BACKEND2"]
algorithm = "round_robin"
max_concurrency = 256
queue_size = 1024
EOF

start_target() { # target -> sets TARGET_PID (0 for the backend itself)
    case $1 in
        backend) TARGET_PID=0 ;;
        nginx)
            NGINX_PIN=("${PIN_PROXY[@]}"); start_nginx nginx "$TMP/nginx/nginx.conf"
            TARGET_PID=$LAST_PID; wait_http nginx "$NGINX_ADDR" "$TARGET_PID" ;;
        haproxy)
            "$HAPROXY" -c -q -f "$TMP/haproxy/haproxy.cfg" || die "invalid HAProxy config"
            start haproxy "${PIN_PROXY[@]}" "$HAPROXY" -db -f "$TMP/haproxy/haproxy.cfg"
            TARGET_PID=$LAST_PID; wait_http haproxy "$HAPROXY_ADDR" "$TARGET_PID" ;;
        levee)
            start levee "${PIN_PROXY[@]}" "$LEVEE_BIN" serve --config "$TMP/levee/levee.toml" --threads 1
            TARGET_PID=$LAST_PID; wait_http levee "$LEVEE_ADDR" "$TARGET_PID" ;;
    esac
}

# CPUs whose utilisation is reported: the pinned ones, or all CPUs together.
if (( ${#PIN_PROXY[@]} )); then
    CPU_IDS=$(printf '%s\n' "$PROXY_CPU" "$BACKEND_CPU" "$CLIENT_CPU" | sort -un | tr '\n' ' ')
else
    CPU_IDS=all
fi
cpu_label() { # id -> column header
    [[ $1 == all ]] && { echo "CPU busy (all $NCPU)"; return; }
    local what=()
    [[ $1 == "$PROXY_CPU" ]] && what+=(proxy)
    [[ $1 == "$BACKEND_CPU" ]] && what+=(backend)
    [[ $1 == "$CLIENT_CPU" ]] && what+=(wrk)
    local IFS=+
    echo "CPU$1 busy (${what[*]})"
}
# busy and total jiffies of the CPUs in CPU_IDS -> "busy total busy total ..."
cpu_jiffies() {
    awk -v ids="$CPU_IDS" '
    BEGIN { n = split(ids, id, " ") }
    { j[$1] = $0 }
    END {
        for (k = 1; k <= n; k++) {
            split(j[id[k] == "all" ? "cpu" : "cpu" id[k]], f, " ")
            t = 0; for (i = 2; i in f; i++) t += f[i]
            printf "%d %d ", t - f[5] - f[6], t
        }
        print ""
    }' /proc/stat
}
# CPU used by processes that are not this script or its descendants (a compiler run by
# someone else, ...): "pid ppid ticks" per process, ticks = utime+stime+cutime+cstime.
proc_snapshot() {
    local f line rest
    local -a F
    for f in /proc/[0-9]*/stat; do
        # A process can exit between the glob and the read; under set -e a failed $(<file)
        # ended the whole script, a failed read builtin does not.
        read -r line 2>/dev/null <"$f" || continue
        rest=${line##*) }
        read -ra F <<<"$rest"
        echo "${f//[!0-9]/} ${F[1]} $(( F[11] + F[12] + F[13] + F[14] ))"
    done
}
other_percent() { # snapshot-before snapshot-after all-cpu-jiffies-delta -> "N%"
    # Sum over foreign processes of ticks(after) - ticks(before); a process that exited
    # counts -ticks(before) because its ticks moved into its parent's cutime/cstime.
    awk -v self=$$ -v total="$3" '
    FNR == 1 { f++ }
    { ppid[f, $1] = $2; ticks[f, $1] = $3; pids[f, $1] = 1 }
    function descendants(f,   p, k, changed) {
        ours[f, self] = 1
        do {
            changed = 0
            for (k in pids) {
                split(k, p, SUBSEP)
                if (p[1] == f && !((f, p[2]) in ours) && ((f, ppid[f, p[2]]) in ours)) {
                    ours[f, p[2]] = 1; changed = 1
                }
            }
        } while (changed)
    }
    END {
        descendants(1); descendants(2)
        for (k in pids) {
            split(k, p, SUBSEP)
            if ((k in ours)) continue
            other += (p[1] == 2 ? ticks[k] : -ticks[k])
        }
        if (other < 0) other = 0
        printf "%d%%\n", (total > 0 ? other * 100 / total : 0)
    }' "$1" "$2"
}
CLK_TCK=$(getconf CLK_TCK)
proc_ticks() { # pid -> utime+stime (ticks) of the process and its child processes (nginx workers)
    local p t=0 v
    (( $1 > 0 )) || { echo 0; return; }
    for p in "$1" $(pgrep -P "$1" || true); do
        v=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null) && t=$(( t + v ))
    done
    echo "$t"
}
us_per_request() { # ticks requests/s -> CPU microseconds per request over DURATION_S
    awk -v t="$1" -v r="$2" -v d="$DURATION_S" -v hz="$CLK_TCK" 'BEGIN { if (r <= 0) print "n/a"; else printf "%.1f\n", t / hz / (r * d) * 1e6 }'
}
all_cpu_total() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t }' /proc/stat; }
cpu_percent() { # "before" "after" -> "p% p% ..."
    local -a a b
    read -ra a <<<"$1"; read -ra b <<<"$2"
    local i out=() dt
    for (( i = 0; i < ${#a[@]}; i += 2 )); do
        dt=$(( b[i+1] - a[i+1] )); (( dt > 0 )) || dt=1
        out+=("$(( (b[i] - a[i]) * 100 / dt ))%")
    done
    echo "${out[*]}"
}

# wrk --latency output -> "req/s p50_ms p99_ms errors"
parse_wrk() {
    awk '
    function ms(v,   n, u) {
        n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000
        if (u == "ms") return n
        if (u == "s")  return n * 1000
        if (u == "m")  return n * 60000
        if (u == "h")  return n * 3600000
        return -1
    }
    /^Requests\/sec:/          { rps = $2 }
    $1 == "50%"               { p50 = ms($2) }
    $1 == "99%"               { p99 = ms($2) }
    /Non-2xx or 3xx responses/ { err += $NF }
    /Socket errors:/          { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
    END {
        if (rps == "" || p50 == "" || p99 == "") exit 1
        printf "%.0f %.3f %.3f %d\n", rps, p50, p99, err
    }' "$1"
}

run_wrk() { # url seconds outfile
    # In the background + wait, so that a signal to this script is handled at once.
    timeout $(( $2 + 30 )) "${PIN_CLIENT[@]}" "$WRK" -t"$THREADS" -c"$CONNS" -d"$2s" \
        --latency "$1" >"$3" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { WRK_PID=; cat "$3" >&2; die "wrk failed against $1"; }
    WRK_PID=
}

declare -A ADDR=([backend]=$BACKEND1 [nginx]=$NGINX_ADDR [haproxy]=$HAPROXY_ADDR [levee]=$LEVEE_ADDR)
declare -A LABEL=([backend]="backend direct" [nginx]="nginx (1 worker)" [haproxy]="HAProxy (1 thread)" [levee]="levee (--threads 1)")
declare -A RPS P50 P99 ERRS CPU RPS_R P50_R P99_R PX_US_R BK_US_R PX_US BK_US
SKEWED=
TARGETS=(backend nginx haproxy)
[[ $SKIP_LEVEE == 1 ]] || TARGETS+=(levee)

NGINX_PIN=("${PIN_BACKEND[@]}")
start_nginx backend "$TMP/backend/nginx.conf"
BACKEND_PID=$LAST_PID
wait_http backend "$BACKEND1" "$BACKEND_PID"
wait_http backend "$BACKEND2" "$BACKEND_PID"

# Other work on the machine (a compiler, ...) skews everything: measure it for 1s.
all_jiffies() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
busy_1s() { # % of all CPUs busy during the next second
    local b0 t0 b1 t1
    read -r b0 t0 < <(all_jiffies); sleep 1; read -r b1 t1 < <(all_jiffies)
    echo $(( (b1 - b0) * 100 / ((t1 - t0) > 0 ? (t1 - t0) : 1) ))
}
wait_idle() { # with BENCH_WAIT_IDLE=N: wait up to N seconds for the machine to be idle
    (( WAIT_IDLE > 0 )) || return 0
    local deadline=$((SECONDS + WAIT_IDLE)) b
    while (( SECONDS < deadline )); do
        b=$(busy_1s)
        (( b <= 5 )) && return 0
        log "machine ${b}% busy, waiting for idle (BENCH_WAIT_IDLE=$WAIT_IDLE)"
        sleep 4
    done
    log "warning: machine still busy after ${WAIT_IDLE}s; measuring anyway"
}
wait_idle
IDLE_BUSY=$(busy_1s)
LOAD_BEFORE="CPU ${IDLE_BUSY}% busy over the 1s before the run (all cores), load average $(cut -d' ' -f1-3 /proc/loadavg)"
if (( IDLE_BUSY > 10 )); then
    log "warning: machine not idle before the run: $LOAD_BEFORE; results will be skewed"
fi
WRK_CMD="wrk -t$THREADS -c$CONNS -d$DURATION --latency http://127.0.0.1:PORT/"
log "wrk: $WRK_CMD (warm-up ${WARMUP_S}s); pinning: $PINNING"
# levee is measured between nginx and HAProxy in every round, the two peers swapping sides from
# one round to the next, so that each round's levee/peer ratios compare targets measured back to
# back on nearly the same machine (see the "paired by round" lines of the report).
ORDERS=()
for (( round = 1; round <= ROUNDS; round++ )); do
(( ROUNDS == 1 )) || log "round $round of $ROUNDS"
if (( round % 2 )); then order=(backend nginx levee haproxy); else order=(backend haproxy levee nginx); fi
[[ $SKIP_LEVEE == 0 ]] || order=("${order[@]/levee/}")
ORDERS+=("$(echo ${order[*]})")
for t in ${order[*]}; do
    start_target "$t"
    url="http://${ADDR[$t]}/"
    body=$(curl -s -m 2 "$url") || die "$t: GET $url failed"
    [[ $body == "hello from backend" ]] || die "$t: unexpected body: $body"
    [[ $t == "${order[0]}" ]] || wait_idle
    if (( WARMUP_S > 0 )); then
        log "$t: warm-up ${WARMUP_S}s"
        run_wrk "$url" "$WARMUP_S" "$TMP/$t.warmup.txt"
    fi
    for (( attempt = 0; ; attempt++ )); do
        log "$t: measuring ${DURATION_S}s"
        proc_snapshot >"$TMP/procs.before"; a0=$(all_cpu_total); j0=$(cpu_jiffies)
        pt0=$(proc_ticks "$TARGET_PID"); bt0=$(proc_ticks "$BACKEND_PID")
        run_wrk "$url" "$DURATION_S" "$TMP/$t.wrk.txt"
        pt1=$(proc_ticks "$TARGET_PID"); bt1=$(proc_ticks "$BACKEND_PID")
        j1=$(cpu_jiffies); a1=$(all_cpu_total); proc_snapshot >"$TMP/procs.after"
        CPU[$t]="$(cpu_percent "$j0" "$j1") $(other_percent "$TMP/procs.before" "$TMP/procs.after" $(( a1 - a0 )))"
        parsed=$(parse_wrk "$TMP/$t.wrk.txt") || { cat "$TMP/$t.wrk.txt" >&2; die "$t: cannot parse wrk output"; }
        read -r RPS[$t] P50[$t] P99[$t] ERRS[$t] <<<"$parsed"
        log "$t: ${RPS[$t]} req/s, p50 ${P50[$t]} ms, p99 ${P99[$t]} ms, errors ${ERRS[$t]}, CPU ${CPU[$t]// /, } (last: other processes)"
        other=${CPU[$t]##* }
        (( ${other%\%} > 5 )) || break
        if (( attempt < RETRIES )); then
            log "$t: other processes used ${other} of the machine; measuring again ($((attempt + 1))/$RETRIES)"
            wait_idle
            continue
        fi
        log "warning: other processes used ${other} of the machine during the $t run; its numbers are skewed"
        SKEWED+="${SKEWED:+, }${LABEL[$t]}"
        break
    done
    RPS_R[$t]+="${RPS[$t]} "; P50_R[$t]+="${P50[$t]} "; P99_R[$t]+="${P99[$t]} "
    if (( TARGET_PID > 0 )); then PX_US_R[$t]+="$(us_per_request $(( pt1 - pt0 )) "${RPS[$t]}") "; fi
    BK_US_R[$t]+="$(us_per_request $(( bt1 - bt0 )) "${RPS[$t]}") "
    (( TARGET_PID == 0 )) || stop_pid "$TARGET_PID"
    if ! kill -0 "$BACKEND_PID" 2>/dev/null; then
        cat "$TMP/backend.log" >&2; die "backend nginx died"
    fi
done
done

# The median round of each target (the machine's speed varies from minute to minute; the
# targets alternate, so every target sees the same mix of fast and slow moments).
median() { # values... -> the median (the mean of the two middle ones for an even count)
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086
    RPS[$t]=$(printf '%.0f' "$(median ${RPS_R[$t]})")
    # shellcheck disable=SC2086
    P50[$t]=$(printf '%.3f' "$(median ${P50_R[$t]})")
    # shellcheck disable=SC2086
    P99[$t]=$(printf '%.3f' "$(median ${P99_R[$t]})")
    # shellcheck disable=SC2086
    if [[ -n ${PX_US_R[$t]:-} ]]; then PX_US[$t]=$(printf '%.1f' "$(median ${PX_US_R[$t]})"); else PX_US[$t]="-"; fi
    # shellcheck disable=SC2086
    BK_US[$t]=$(printf '%.1f' "$(median ${BK_US_R[$t]})")
done

# ---------------------------------------------------------------- report
ratio() { # a b -> a/b with 2 decimals, or n/a
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }'
}

NGINX_VER=$("$NGINX" -v 2>&1 | sed 's/^nginx version: nginx\///')
HAPROXY_VER=$("$HAPROXY" -v 2>&1 | awk 'NR == 1 { print $3 }')
WRK_VER=$({ "$WRK" -v 2>&1 || true; } | awk 'NR == 1 { print $2 }')
if [[ $SKIP_LEVEE == 1 ]]; then
    LEVEE_VER="skipped (BENCH_SKIP_LEVEE=1)"
else
    LEVEE_VER=$({ "$LEVEE_BIN" --version 2>/dev/null || true; } | awk 'NR == 1 { print $NF }')
    LEVEE_VER="${LEVEE_VER:-?} (binary built $(date -u -r "$LEVEE_BIN" '+%Y-%m-%d %H:%M UTC'); tree at git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ', dirty tree'))"
fi
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
ENV_PREFIX="BENCH_THREADS=$THREADS BENCH_CONNS=$CONNS BENCH_DURATION=$DURATION"
[[ $SKIP_LEVEE == 1 ]] && ENV_PREFIX+=" BENCH_SKIP_LEVEE=1"
[[ $WARMUP == 2s ]] || ENV_PREFIX+=" BENCH_WARMUP=$WARMUP"
[[ $ROUNDS == 10 ]] || ENV_PREFIX+=" BENCH_ROUNDS=$ROUNDS"
[[ $WAIT_IDLE == 0 ]] || ENV_PREFIX+=" BENCH_WAIT_IDLE=$WAIT_IDLE"
[[ $RETRIES == 2 ]] || ENV_PREFIX+=" BENCH_RETRIES=$RETRIES"
[[ $PIN == 1 ]] || ENV_PREFIX+=" BENCH_PIN=$PIN"
[[ $PROXY_CPU$BACKEND_CPU$CLIENT_CPU == 001 ]] ||
    ENV_PREFIX+=" BENCH_PROXY_CPU=$PROXY_CPU BENCH_BACKEND_CPU=$BACKEND_CPU BENCH_CLIENT_CPU=$CLIENT_CPU"
[[ $SKIP_LEVEE == 1 || $LEVEE_BIN == "$ROOT/$LEVEE_BIN_DEFAULT" ]] || ENV_PREFIX+=" LEVEE_BIN=$LEVEE_BIN"

report() {
    local id t head="| target | req/s (median) | p50 ms | p99 ms | errors | req/s of each round | proxy CPU µs/request (median) | backend CPU µs/request (median) |" sep="|---|---:|---:|---:|---:|---|---:|---:|"
    for id in $CPU_IDS; do head+=" $(cpu_label "$id") |"; sep+="---:|"; done
    head+=" other processes (of all CPUs) |"; sep+="---:|"
    echo "$ROUNDS round(s), the targets alternating; req/s, p50 and p99 are each target's median over the rounds;"
    echo "errors and CPU-busy columns are from the last round. CPU µs/request: user+sys time of the proxy's"
    echo "processes (nginx: master and worker) and of the backend nginx, per request answered; the proxy"
    echo "and the backend share a CPU, so req/s is about 1 / (proxy + backend) when that CPU is the limit."
    echo
    echo "$head"
    echo "$sep"
    for t in "${TARGETS[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$t]}" "${RPS[$t]}" \
            "${P50[$t]}" "${P99[$t]}" "${ERRS[$t]}" "${RPS_R[$t]% }" "${PX_US[$t]}" "${BK_US[$t]}" "${CPU[$t]// / | }"
    done
    echo
    [[ -z $SKEWED ]] || echo "- **warning**: other processes used > 5% of the machine during: $SKEWED; those rows are skewed"
    if [[ $SKIP_LEVEE == 1 ]]; then echo "- levee skipped (BENCH_SKIP_LEVEE=1): no ratios"; return; fi
    echo "- levee/nginx req/s: $(ratio "${RPS[levee]:-}" "${RPS[nginx]}")"
    echo "- levee/HAProxy req/s: $(ratio "${RPS[levee]:-}" "${RPS[haproxy]}")"
    echo "- levee/nginx p99: $(ratio "${P99[levee]:-}" "${P99[nginx]}") (${P99[levee]:-n/a} ms vs ${P99[nginx]} ms; < 1 means levee is faster)"
    echo "- levee/HAProxy p99: $(ratio "${P99[levee]:-}" "${P99[haproxy]}") (${P99[levee]:-n/a} ms vs ${P99[haproxy]} ms)"
    echo "- levee/nginx p50: $(ratio "${P50[levee]:-}" "${P50[nginx]}"); levee/HAProxy p50: $(ratio "${P50[levee]:-}" "${P50[haproxy]}")"
    echo
    echo "Paired by round (targets measured back to back; in each round's order: $(printf '%s; ' "${ORDERS[@]}" | sed 's/; $//')):"
    echo "levee's figure over the peer's of the same round, the median of those ratios and the sign"
    echo "test's interval for it (\`bench/paired.py\`: no assumption on the noise's distribution;"
    echo "\"undecided\" means the interval contains the target). The better peer is the one with the"
    echo "higher median req/s."
    echo
    # shellcheck disable=SC2086
    python3 bench/paired.py "levee/nginx req/s" 1.1 "${RPS_R[levee]}" "${RPS_R[nginx]}"
    python3 bench/paired.py "levee/HAProxy req/s" 1.1 "${RPS_R[levee]}" "${RPS_R[haproxy]}"
    # The better peer: the one with the higher median req/s over the run (taking the better of
    # the two in each round instead would pit levee against the maximum of two noisy draws).
    local peer=nginx
    (( ${RPS[haproxy]} > ${RPS[nginx]} )) && peer=haproxy
    python3 bench/paired.py "levee/${LABEL[$peer]%% *} (the better peer) req/s, point 18 wants >= 1.1x" 1.1 "${RPS_R[levee]}" "${RPS_R[$peer]}"
    python3 bench/paired.py "levee/${LABEL[$peer]%% *} p99, point 18 wants no worse" 1.0 "${P99_R[levee]}" "${P99_R[$peer]}" lower
}

echo
report

if [[ $WRITE == 1 ]]; then
    results_file="$ROOT/bench/RESULTS.md"
    [[ -f $results_file ]] || printf '# levee proxy benchmark results\n\nAppended by `bench/proxy.sh` (see bench/README.md). Newest last.\n' >"$results_file"
    {
        echo
        echo "## $(date -u '+%Y-%m-%d %H:%M UTC'), nproc $NCPU"
        echo
        echo "- machine: $NCPU cores (\`nproc\`), ${CPU_MODEL:-unknown CPU}, $(uname -sr)"
        echo "- versions: nginx $NGINX_VER, HAProxy $HAPROXY_VER, wrk $WRK_VER, levee $LEVEE_VER"
        echo "- command: \`$ENV_PREFIX $INVOCATION\`"
        echo "- wrk per target: \`${WRK_CMD/-d$DURATION/-d${DURATION_S}s}\` after a ${WARMUP_S}s warm-up with the same parameters"
        echo "- other load: $LOAD_BEFORE. The \"other processes\" column is the CPU used during each"
        echo "  measurement by processes that are not the benchmark's, in % of the whole machine"
        echo "  (one busy core = $(( 100 / NCPU ))%); above a few % the row is skewed."
        echo "- pinning: $PINNING."
        if (( ${#PIN_PROXY[@]} )) && [[ $PROXY_CPU$BACKEND_CPU$CLIENT_CPU == 001 ]]; then
            echo "  Why: with 2 cores, wrk gets a core of its own so the load generator is never the limit"
            echo "  (its CPU column stays well under 100% for proxied targets), and everything a proxied request"
            echo "  costs server-side (proxy + backend) is confined to the other core, the same for every proxy."
            echo "  req/s therefore measures proxy cost plus a constant backend cost; the backend alone"
            echo "  (\"backend direct\") is far cheaper. Putting the proxy alone on a core and wrk+backend on the"
            echo "  other made the wrk+backend core the bottleneck (~88k req/s for every proxy), hiding differences."
        fi
        echo "- setup: backend = one nginx (1 worker) serving a 19-byte 200 on $BACKEND1 and $BACKEND2;"
        echo "  each proxy uses one core/thread, round robin over both, keep-alive to the backends"
        echo "  (nginx: upstream keepalive 64; HAProxy: http-reuse always; levee: max_concurrency 256, queue 1024), no access logs."
        echo
        report
    } >>"$results_file"
    log "appended to $results_file"
fi
