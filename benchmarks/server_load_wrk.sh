#!/bin/bash
# Engine vs dict (and any other variants of benchmarks/server_load.py) driven by wrk instead of
# the Python client: every variant's server runs for the whole run, wrk loads one at a time for
# SECS seconds, rotating the order each round, and each slice reports wall-clock req/s, requests
# per server CPU-second (/proc/PID/stat), how much of the slice the server's main thread spent
# running and waiting for a CPU (/proc/PID/schedstat), and wrk's p99.
#
#   bash benchmarks/server_load_wrk.sh ROUNDS SECS CONNECTIONS VARIANT...
#   bash benchmarks/server_load_wrk.sh 8 3 32 dict engine
#
# Variants: engine, engine-memory, dict, dict-checkpoint, dict-actor; "dict~2" is a second
# dict server (A/A runs). Needs wrk (apt-get install wrk) and Linux. Run from the repository.
set -euo pipefail
rounds=$1; secs=$2; conns=$3; shift 3; vars=("$@")
d=$(mktemp -d /tmp/server_load_wrk.XXXX)
declare -A PID PORT
cleanup() { for v in "${vars[@]}"; do kill -TERM "${PID[$v]}" 2>/dev/null || true; done; wait; rm -rf "$d"; }
trap cleanup EXIT
for v in "${vars[@]}"; do
  PORT[$v]=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python -m benchmarks.server_load --serve-variant "$v" "${PORT[$v]}" "$d/$v" > "$d/$v.out" 2>&1 &
  PID[$v]=$!
done
for v in "${vars[@]}"; do
  for _ in $(seq 150); do grep -q "serving on" "$d/$v.out" && break; sleep 0.2; done
  python - "${PORT[$v]}" 200 "$d/$v.lua" <<'PY'
import json, sys, trio
from benchmarks.server_load import _create_sessions, TOOLS_LIST
port, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ids = trio.run(_create_sessions, port, n)
body = TOOLS_LIST.decode()
open(out, "w").write(
    "ids = {" + ",".join(json.dumps(i) for i in ids) + "}\ncounter = 0\n"
    "request = function()\n  counter = counter + 1\n"
    "  return wrk.format('POST', '/mcp', {['content-type']='application/json', "
    "['accept']='application/json, text/event-stream', ['mcp-protocol-version']='2025-06-18', "
    "['mcp-session-id']=ids[(counter % #ids) + 1]}, " + json.dumps(body) + ")\nend\n"
)
PY
  wrk -t1 -c"$conns" -d1s -s "$d/$v.lua" "http://127.0.0.1:${PORT[$v]}/mcp" > /dev/null  # warm-up
done
snap() { read -r run wait _ < "/proc/$1/schedstat"; echo "$(awk '{print $14+$15}' "/proc/$1/stat") $run $wait"; }
k=${#vars[@]}
for n in $(seq "$rounds"); do
  for j in $(seq 0 $((k - 1))); do
    if (( n % 2 )); then v=${vars[$(( (j + n) % k ))]}; else v=${vars[$(( (k - 1 - j + n) % k ))]}; fi
    a=$(snap "${PID[$v]}")
    wrk -t1 -c"$conns" -d"${secs}s" -s "$d/$v.lua" --latency "http://127.0.0.1:${PORT[$v]}/mcp" > "$d/w.txt"
    b=$(snap "${PID[$v]}")
    python - "$n" "$v" "$secs" "$a" "$b" "$d/w.txt" <<'PY'
import os, re, sys
n, v, secs, a, b, path = sys.argv[1:]
a, b, secs = [float(x) for x in a.split()], [float(x) for x in b.split()], float(secs)
text = open(path).read()
found = re.search(r"(\d+) requests in ([\d.]+)(m?s)", text)
req = int(found.group(1))
secs = float(found.group(2)) / (1000 if found.group(3) == "ms" else 1)
cpu = (b[0] - a[0]) / os.sysconf("SC_CLK_TCK")
p99 = re.search(r"99%\s+(\S+)", text).group(1)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{n} {v} rps={req / secs:.0f} req_per_cpu_s={req / cpu:.0f} cpu_share={cpu / secs:.2f} "
      f"running={(b[1] - a[1]) / 1e9 / secs:.2f} waiting={(b[2] - a[2]) / 1e9 / secs:.2f} "
      f"p99={p99}" + (f" non2xx={bad.group(1)}" if bad else ""), flush=True)
PY
  done
done
