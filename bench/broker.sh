#!/usr/bin/env bash
# The credentials broker (issue 13): an HTTPS request whose placeholder the policy point swaps
# for the real value (TLS terminated with the per-run CA, verified TLS upstream) against the
# same request through an untouched tunnel of the same policy point, and a direct connection
# (--network host) for reference. In a fake internet of the benchmark's own (two network
# namespaces joined by a veth pair, as tests/common/net.rs builds) with an HTTPS server whose
# test CA is added to the benchmark's copy of /etc. Figures: added latency per request over
# one keep-alive connection and with a new connection each (median and p99 of 500), and the
# time of a 256 MiB upload (curl -T). Run as root: bench/broker.sh
# Writes bench/results/broker.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_setup
out=bench/results/broker.md
runs=${RUNS:-5}
n=${REQUESTS:-500}

fake_internet
# The test CA, a leaf for both names, the CA in the benchmark's system bundle.
(cd "$BENCH_DIR"
 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
   -subj /CN=bench-ca -keyout ca.key -out ca.pem 2>/dev/null
 openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bound.test \
   -keyout leaf.key -out leaf.csr 2>/dev/null
 printf 'subjectAltName=DNS:bound.test,DNS:tunnel.test\nbasicConstraints=CA:FALSE\n' > ext
 openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
   -extfile ext -out leaf.pem 2>/dev/null
 cat ca.pem >> etc/ssl/certs/ca-certificates.crt
 head -c 256M /dev/zero > upload)
chmod 644 "$BENCH_DIR/upload"
key="sk-bench-$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40)"
# HTTPS, HTTP/1.1 keep-alive: GET answers "real" when x-api-key is the real value (so the
# benchmark checks the swap happened), PUT reads and drops the body.
in_internet python3 -c '
import http.server, ssl, sys
key = sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body in one write, and no Nagle: else every keep-alive request waits
    # for the client'"'"'s delayed ACK (40 ms) and that is all one measures.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    def reply(self, body):
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(b"real" if self.headers.get("x-api-key") == key else b"other")
    def do_PUT(self):
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            got = self.rfile.read(min(n, 1 << 20))
            if not got: break
            n -= len(got)
        self.reply(b"done")
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("11.22.33.3", 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
' "$BENCH_DIR/leaf.pem" "$BENCH_DIR/leaf.key" "$key" &
sleep 0.5

# HOST MODE N: per-request times in ms (median, p99). keepalive: one connection, a warm-up
# request first; new: a new TCP+TLS connection for each request.
cat > "$BENCH_DIR/latency.py" <<'PY'
import http.client, os, ssl, statistics, sys, time
host, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
key = os.environ["BENCH_KEY"]
want = b"real" if host == "bound.test" else b"other"
ctx = ssl.create_default_context()
def request(conn):
    conn.request("GET", "/", headers={"x-api-key": key})
    body = conn.getresponse().read()
    assert body == want, body
times = []
conn = http.client.HTTPSConnection(host, 443, context=ctx)
if mode == "keepalive":
    request(conn)
for _ in range(n):
    t = time.perf_counter()
    if mode == "new":
        conn = http.client.HTTPSConnection(host, 443, context=ctx)
    request(conn)
    if mode == "new":
        conn.close()
    times.append((time.perf_counter() - t) * 1000)
times.sort()
print("%.3f %.3f" % (statistics.median(times), times[int(len(times) * 0.99)]))
PY
cat > "$BENCH_DIR/upload.sh" <<UP
exec curl -sf -o /dev/null --noproxy '*' -H 'Expect:' -H "x-api-key: \$BENCH_KEY" -T $BENCH_DIR/upload "\$1"
UP
chmod 644 "$BENCH_DIR/latency.py" "$BENCH_DIR/upload.sh"
cat > "$BENCH_DIR/run.sh" <<RUN
set -e
getent passwd agentuser-net >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin agentuser-net
getent passwd agentuser-track >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin agentuser-track
$BIN create bench >/dev/null
$BIN net bench allow bound.test tunnel.test
printf '%s' '$key' | $BIN cred env bench BENCH_KEY --host bound.test
# The tunnel and direct runs send the placeholder too: the same request, nothing swapped.
for mode in keepalive new; do
  $BIN exec bench --network allowlist -- python3 $BENCH_DIR/latency.py bound.test \$mode $n > $BENCH_DIR/lat-inject-\$mode
  $BIN exec bench --network allowlist -- python3 $BENCH_DIR/latency.py tunnel.test \$mode $n > $BENCH_DIR/lat-tunnel-\$mode
  $BIN exec bench --network host -- python3 $BENCH_DIR/latency.py tunnel.test \$mode $n > $BENCH_DIR/lat-direct-\$mode
done
up="sh $BENCH_DIR/upload.sh"
hyperfine -N --style basic --warmup 1 --runs $runs --export-json $BENCH_DIR/up.json --export-markdown $BENCH_DIR/up.md \
  -n direct "$BIN exec bench --network host -- \$up https://tunnel.test/up" \
  -n tunnel "$BIN exec bench --network allowlist -- \$up https://tunnel.test/up" \
  -n injection "$BIN exec bench --network allowlist -- \$up https://bound.test/up" </dev/null
RUN
in_host bash -c "$(declare -f in_sandbox); BENCH_DIR=$BENCH_DIR in_sandbox 'bash $BENCH_DIR/run.sh'"

row() { read -r median p99 < "$BENCH_DIR/lat-$2-$3"; echo "| $1 | $median | $p99 |"; }
added() {
    python3 -c "import sys; a, b = [float(open(f).read().split()[int(sys.argv[3])]) for f in sys.argv[1:3]]; print('%.2f' % (a - b))" \
        "$BENCH_DIR/lat-inject-$1" "$BENCH_DIR/lat-tunnel-$1" "$2"
}
{
    echo "# broker: injection vs an untouched tunnel"
    echo
    echo "$(date -u +%F), $(nproc) cores, $(uname -r). A fake internet of two network namespaces"
    echo "joined by a veth pair; a python HTTPS server (ECDSA P-256 leaf of a test CA, HTTP/1.1"
    echo "keep-alive). Every client runs as the agent through \`agentuser exec\`. **injection**:"
    echo "bound.test, a brokered secret: the policy point terminates TLS with the run's CA, opens"
    echo "its own verified TLS connection upstream and swaps the placeholder in the x-api-key"
    echo "header (the server checks it received the real value). **tunnel**: tunnel.test, same"
    echo "server and request, allowed but not bound: the policy point relays the TLS stream"
    echo "untouched. **direct**: \`--network host\`, no policy point. Clients connect directly"
    echo "(transparent capture), python http.client with the system's CA bundle."
    echo
    echo "The machine is shared (2 cores, other helpers building and testing at the same time):"
    echo "figures are noisy, p99 most of all. Rerun \`bench/broker.sh\` on an idle machine."
    echo
    for mode in keepalive new; do
        case $mode in
            keepalive) echo "## Latency per request, one keep-alive connection ($n requests)";;
            new) echo "## Latency per request, a new TCP+TLS connection each ($n requests)";;
        esac
        echo
        echo "| | median [ms] | p99 [ms] |"
        echo "|:---|---:|---:|"
        row direct direct $mode
        row tunnel tunnel $mode
        row injection inject $mode
        echo
        echo "**Added by injection over the tunnel: $(added $mode 0) ms at the median, $(added $mode 1) ms at p99** (target: at most 2 ms at the median)."
        echo
    done
    echo "## Throughput: 256 MiB upload (curl -T, PUT), $runs runs each"
    echo
    cat "$BENCH_DIR/up.md"
    echo
    echo "**Upload throughput, injection / tunnel: $(ratio "$BENCH_DIR/up.json" tunnel injection)x** (target: at least 0.8x; times include exec's start-up, about 15 ms)."
} > "$out"
cat "$out"
