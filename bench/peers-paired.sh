#!/usr/bin/env bash
# Paired S2 (or S1) runs: two proxies measured at the same time, both pinned to CPU 0, the load
# and the upstream on CPU 1, so whatever the host does to one it does to the other. Prints each
# round's CPU per tunnel (request) of A and B and their ratio, then the median ratio.
#
# Why: on a shared host the peer bench's passes swing by a fifth from one to the next (the same
# build, minutes apart), more than the tenths its targets are about; a ratio taken within one
# window moves far less (README, "Performance": S2 ours / minimal 1.29-1.54 over six paired
# rounds, 0.67-1.37 over the three passes of one peer-bench run). Sharing a core shares its
# caches too, which weighs more on the system with more code on the path: best for comparing two
# builds of ours. No hardware counters in this VM (perf: instructions "not supported"), so CPU
# time is what there is.
#
#   bash bench/peers-paired.sh ROUNDS A B
#     A, B: `minimal` (the peer bench's node:http forwarder), `proxy-chain`, or a built checkout
#           of this project (its dist/ is run with the peer bench's project/proxy.yaml, or with
#           a proxy.yaml in that checkout if it has one; `node` options from a file `nodeopt`
#           in it, if any)
#   env:  PEERS     a copy of ../shared/bench-peers where run.sh has built .build/benchtool
#                   (default ${TMPDIR:-/tmp}/bench-peers)
#         SCENARIO  s2 (CONNECT setup, default) or s1 (plain HTTP keep-alive, wrk c=50)
#         PRE       seconds of S1 on both before S2 (the peer bench runs S2 after S1), default 8
#         SECS      measured seconds (default 8; S2 adds 2 s of warm-up), CONC S2 workers (20)
#
# Sides swap ports each round (A on the first port in odd rounds, B in even), everything started is stopped
# by PID on exit. Events of our rows go to events-PORT.log in the run's own temporary directory
# (mktemp -d, deleted at the end: a run writes hundreds of MB).
set -uo pipefail

ROUNDS=${1:?rounds}
A=${2:?system A}
B=${3:?system B}
PEERS=${PEERS:-${TMPDIR:-/tmp}/bench-peers}
SCENARIO=${SCENARIO:-s2}
PRE=${PRE:-8}
SECS=${SECS:-8}
CONC=${CONC:-20}
BT="$PEERS/.build/benchtool"
UP_PORT=${UP_PORT:-18380}
PORT1=${PORT1:-18201}
PORT2=${PORT2:-18202}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/peers-paired.XXXXXX")
PIDS=()

[ -x "$BT" ] || { echo "no $BT: run $PEERS/run.sh once (it builds benchtool)" >&2; exit 2; }
command -v nginx >/dev/null || command -v /usr/sbin/nginx >/dev/null || { echo "nginx is needed (run.sh installs it)" >&2; exit 2; }
export PATH="$PATH:/usr/sbin:/sbin"

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

# The upstream: nginx serving /small (100 bytes, keep-alive), as run.sh configures it.
mkdir -p "$TMP/nginx/tmp" "$TMP/logs"
SMALL_BODY=$(printf 'x%.0s' $(seq 100))
cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/logs/nginx-error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/tmp/body;
  proxy_temp_path $TMP/nginx/tmp/proxy;
  fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
  uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
  scgi_temp_path $TMP/nginx/tmp/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$UP_PORT backlog=4096;
    location = /small { default_type text/plain; return 200 "$SMALL_BODY"; }
  }
}
EOF
taskset -c 1 nginx -p "$TMP/nginx" -e "$TMP/logs/nginx-error.log" -c "$TMP/nginx.conf" &
PIDS+=($!)
"$BT" waitport "127.0.0.1:$UP_PORT" 10s || { echo "nginx did not start (port $UP_PORT taken?)" >&2; exit 1; }

# start SYSTEM PORT: prints the PID of the process that serves (node itself, for CPU accounting).
start() {
  local system=$1 port=$2
  case $system in
    minimal) PORT=$port taskset -c 0 node "$PEERS/peers/node-minimal.mjs" "$port" >/dev/null 2>&1 & ;;
    proxy-chain) (cd "$PEERS" && PORT=$port exec taskset -c 0 node peers/proxy-chain-bare.mjs >/dev/null 2>&1) & ;;
    *)
      local config="$PEERS/project/proxy.yaml"
      [ -f "$system/proxy.yaml" ] && config="$system/proxy.yaml"
      # shellcheck disable=SC2046 # nodeopt holds node options, split on purpose
      taskset -c 0 node $(cat "$system/nodeopt" 2>/dev/null) "$system/dist/src/cli.js" serve --config "$config" \
        --listen "127.0.0.1:$port" --admin-listen off >>"$TMP/events-$port.log" 2>&1 &
      ;;
  esac
  echo $!
}

wrk_s1() { # port secs out
  (cd "$PEERS" && WRK_TARGET=127.0.0.1:$UP_PORT taskset -c 1 wrk -t1 -c50 -d"$2"s --timeout 5s -s lib/wrk-proxy.lua \
    "http://127.0.0.1:$1/" 2>&1 | sed -n 's/^WRKJSON //p' >"$3")
}

ratios=()
for round in $(seq 1 "$ROUNDS"); do
  if ((round % 2)); then first=$A second=$B; else first=$B second=$A; fi
  p1=$(start "$first" "$PORT1")
  p2=$(start "$second" "$PORT2")
  PIDS+=("$p1" "$p2")
  "$BT" waitport "127.0.0.1:$PORT1" 10s && "$BT" waitport "127.0.0.1:$PORT2" 10s || { echo "a system did not start" >&2; exit 1; }
  if [ "$SCENARIO" = s1 ]; then
    wrk_s1 "$PORT1" 3 /dev/null & w=$!
    wrk_s1 "$PORT2" 3 /dev/null; wait "$w"
    c10=$("$BT" cpu "$p1"); c20=$("$BT" cpu "$p2")
    wrk_s1 "$PORT1" "$SECS" "$TMP/r1.json" & w=$!
    wrk_s1 "$PORT2" "$SECS" "$TMP/r2.json"; wait "$w"
    c11=$("$BT" cpu "$p1"); c21=$("$BT" cpu "$p2")
    # CPU ticks are 10 ms: µs per request = ticks * 10,000 / requests
    u1=$(node -e 'const r=require(process.argv[1]); console.log((Number(process.argv[2])*1e4/r.requests).toFixed(1))' "$TMP/r1.json" $((c11 - c10)))
    u2=$(node -e 'const r=require(process.argv[1]); console.log((Number(process.argv[2])*1e4/r.requests).toFixed(1))' "$TMP/r2.json" $((c21 - c20)))
  else
    if [ "$PRE" != 0 ]; then
      wrk_s1 "$PORT1" "$PRE" /dev/null & w=$!
      wrk_s1 "$PORT2" "$PRE" /dev/null; wait "$w"
    fi
    taskset -c 1 "$BT" s2 -proxy "127.0.0.1:$PORT1" -target "127.0.0.1:$UP_PORT" -c "$CONC" -d "${SECS}s" -warmup 2s -pid "$p1" \
      >"$TMP/r1.json" 2>/dev/null & w=$!
    taskset -c 1 "$BT" s2 -proxy "127.0.0.1:$PORT2" -target "127.0.0.1:$UP_PORT" -c "$CONC" -d "${SECS}s" -warmup 2s -pid "$p2" \
      >"$TMP/r2.json" 2>/dev/null
    wait "$w"
    u1=$(node -e 'console.log(require(process.argv[1]).cpu_us_per_op.toFixed(1))' "$TMP/r1.json")
    u2=$(node -e 'console.log(require(process.argv[1]).cpu_us_per_op.toFixed(1))' "$TMP/r2.json")
  fi
  kill "$p1" "$p2" 2>/dev/null; wait "$p1" "$p2" 2>/dev/null
  if ((round % 2)); then ua=$u1 ub=$u2; else ua=$u2 ub=$u1; fi
  ratio=$(node -e 'console.log((Number(process.argv[2])/Number(process.argv[1])).toFixed(3))' "$ua" "$ub")
  ratios+=("$ratio")
  echo "round $round: $SCENARIO CPU µs per op  A $ua  B $ub  B/A $ratio"
done
node -e 'const r=process.argv.slice(1).map(Number).sort((a,b)=>a-b); const m=r.length%2?r[(r.length-1)/2]:(r[r.length/2-1]+r[r.length/2])/2; console.log(`B/A median ${m.toFixed(3)} (${r[0]}-${r[r.length-1]}, ${r.length} rounds)`)' "${ratios[@]}"
