#!/usr/bin/env bash
# The policy point against a direct connection, in a fake internet of the benchmark's own
# (two network namespaces joined by a veth pair, as tests/common/net.rs builds): throughput
# of a 1 GiB download, added latency of a new connection (median and p90 of 300), and the
# resident memory of the policy point holding 100 connections. Run as root:
# bench/network.sh   Writes bench/results/network.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_setup
out=bench/results/network.md
runs=${RUNS:-5}
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

fake_internet
truncate -s 1G "$BENCH_DIR/big"
# DNS (bench/lib.sh): big.test -> 11.22.33.3; HTTP: / is a few bytes, /big the 1 GiB file (sendfile);
# any connection that sends nothing stays open (for the memory figure).
in_internet python3 -c '
import os, socket, sys, threading
big = sys.argv[1]
def serve(c):
    req = c.recv(4096)
    if not req: return
    if b"/big" in req.split(b"\r\n")[0]:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % os.path.getsize(big))
        with open(big, "rb") as f: c.sendfile(f)
    else:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
    c.close()
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("11.22.33.3", 80)); l.listen(1024)
while True:
    c, _ = l.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
' "$BENCH_DIR/big" &
sleep 0.5

cat > "$BENCH_DIR/latency.py" <<'PY'
import subprocess, statistics, sys
t = []
for _ in range(300):
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "--noproxy", "*", "-w", "%{time_total}",
                        "http://big.test/"], capture_output=True, text=True)
    t.append(float(r.stdout) * 1000)
t.sort()
print("%.2f %.2f" % (statistics.median(t), t[int(len(t) * 0.9)]))
PY
cat > "$BENCH_DIR/hold.py" <<'PY'
import socket, sys, time
cs = [socket.create_connection(("big.test", 80)) for _ in range(100)]
print("held", flush=True)
time.sleep(20)
PY
chmod 644 "$BENCH_DIR"/*.py
cat > "$BENCH_DIR/run.sh" <<RUN
set -e
getent passwd agentuser-net >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin agentuser-net
getent passwd agentuser-track >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin agentuser-track
$BIN create bench >/dev/null
$BIN net bench allow big.test
hyperfine -N --style basic --warmup 1 --runs $runs --export-json $BENCH_DIR/tp.json --export-markdown $BENCH_DIR/tp.md \
  -n direct "$BIN exec bench --network host -- curl -s -o /dev/null http://big.test/big" \
  -n "policy point, transparent" "$BIN exec bench --network allowlist -- curl -s -o /dev/null --noproxy * http://big.test/big" \
  -n "policy point, proxy" "$BIN exec bench --network allowlist -- curl -s -o /dev/null http://big.test/big" \
  -n "policy point, CONNECT tunnel" "$BIN exec bench --network allowlist -- curl -s -o /dev/null -p http://big.test/big" </dev/null
$BIN exec bench --network host -- python3 $BENCH_DIR/latency.py > $BENCH_DIR/lat-direct
$BIN exec bench --network allowlist -- python3 $BENCH_DIR/latency.py > $BENCH_DIR/lat-point
$BIN exec bench --network allowlist -- python3 $BENCH_DIR/hold.py > $BENCH_DIR/held &
while ! grep -q held $BENCH_DIR/held 2>/dev/null; do sleep 0.1; done
uid=\$(id -u agentuser-net)
for s in /proc/[0-9]*/status; do
  if grep -q "^Uid:	\$uid	" \$s 2>/dev/null; then grep VmRSS \$s | awk '{print \$2}'; fi
done | sort -n | tail -1 > $BENCH_DIR/rss
wait
RUN
in_host bash -c "$(declare -f in_sandbox); BENCH_DIR=$BENCH_DIR in_sandbox 'bash $BENCH_DIR/run.sh'"

read -r direct_median direct_p90 < "$BENCH_DIR/lat-direct"
read -r point_median point_p90 < "$BENCH_DIR/lat-point"
{
    echo "# network: the policy point vs a direct connection"
    echo
    echo "$(date -u +%F), $(nproc) cores, $(uname -r), load average $load_before before and"
    echo "$(cut -d' ' -f1-3 /proc/loadavg) after. A fake internet of two network namespaces"
    echo "joined by a veth pair (python servers: DNS, HTTP with sendfile). Every command runs as"
    echo "the agent through \`agentuser exec\`: \`--network host\` is the direct connection."
    echo
    echo "## Throughput: 1 GiB download (curl), $runs runs each"
    echo
    cat "$BENCH_DIR/tp.md"
    echo
    echo "**Throughput policy point (transparent) / direct: $(ratio "$BENCH_DIR/tp.json" direct 'policy point, transparent')x**,"
    echo "proxy (plain HTTP, forwarded by hyper): $(ratio "$BENCH_DIR/tp.json" direct 'policy point, proxy')x,"
    echo "CONNECT tunnel (\`curl -p\`, spliced like HTTPS through the proxy): $(ratio "$BENCH_DIR/tp.json" direct 'policy point, CONNECT tunnel')x"
    echo "(target: at least 0.9x; times include exec's start-up)."
    echo
    echo "## Latency of a new connection (300 sequential curl GETs in one run, DNS included)"
    echo
    echo "| | median [ms] | p90 [ms] |"
    echo "|:---|---:|---:|"
    echo "| direct | $direct_median | $direct_p90 |"
    echo "| policy point (transparent) | $point_median | $point_p90 |"
    echo
    echo "**Added latency at the median: $(python3 -c "print('%.2f' % ($point_median - $direct_median))") ms** (target: at most 1 ms)."
    echo
    echo "## Memory"
    echo
    echo "Resident memory of the policy point holding 100 open connections: **$(cat "$BENCH_DIR/rss") KiB**."
} > "$out"
cat "$out"
