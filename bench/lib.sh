# Shared by the benchmark scripts: a hermetic host view (private mount namespace over a
# throwaway copy of /etc and private state and temp directories), like the tests use.
# Usage: in_sandbox SCRIPT  (runs bash -c SCRIPT as root inside the namespace, with $BIN set)

bench_setup() {
    [ "$(id -u)" = 0 ] || { echo "benchmarks create accounts: run as root" >&2; exit 1; }
    command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 1; }
    cd "$(dirname "$0")/.."
    cargo build --release --locked -q
    BENCH_DIR=$(mktemp -d /var/cache/agentuser-bench.XXXXXX)
    trap 'stop_trackers; rm -rf "$BENCH_DIR"' EXIT
    chmod 755 "$BENCH_DIR"
    cp -a /etc "$BENCH_DIR/etc"
    mkdir -p "$BENCH_DIR/state" "$BENCH_DIR/home" "$BENCH_DIR/bin"
    mkdir -m 1777 "$BENCH_DIR/tmp" "$BENCH_DIR/vartmp" "$BENCH_DIR/shm"
    install -m 4755 "${CARGO_TARGET_DIR:-target}/release/agentuser" "$BENCH_DIR/bin/agentuser"
    install -m 644 pam/agentuser "$BENCH_DIR/etc/pam.d/agentuser"
    BIN=$BENCH_DIR/bin/agentuser
    export BIN BENCH_DIR
}

# Ends the agents' share trackers (src/share/track.rs), which outlive their runs: asking
# one for its report ends it.
stop_trackers() {
    local sock
    for sock in "$BENCH_DIR"/state/index/*/tracker.sock; do
        [ -S "$sock" ] || continue
        python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2)
try:
    s.connect(sys.argv[1]); s.recv(1 << 20)
except OSError:
    pass' "$sock"
    done
    return 0
}

in_sandbox() {
    unshare --mount --propagation private -- bash -c "
        set -e
        mount --bind $BENCH_DIR/etc /etc
        mount -t tmpfs -o mode=0755 bench /var/lib
        mkdir -p /var/lib/agentuser
        mount --bind $BENCH_DIR/state /var/lib/agentuser
        mount --bind $BENCH_DIR/home /home
        mount --bind $BENCH_DIR/tmp /tmp
        mount --bind $BENCH_DIR/vartmp /var/tmp
        mount --bind $BENCH_DIR/shm /dev/shm
        $1"
}

# ratio JSON NAME_A NAME_B: mean(A)/mean(B) from a hyperfine --export-json file.
ratio() {
    python3 - "$@" <<'PY'
import json, sys
runs = {r["command"]: r["mean"] for r in json.load(open(sys.argv[1]))["results"]}
print(f"{runs[sys.argv[2]] / runs[sys.argv[3]]:.2f}")
PY
}

# median_ratio JSON NAME_A NAME_B: median(A)/median(B); one slow outlier (another tenant of
# the machine) moves a mean, not a median.
median_ratio() {
    python3 - "$@" <<'PY'
import json, sys
runs = {r["command"]: r["median"] for r in json.load(open(sys.argv[1]))["results"]}
print(f"{runs[sys.argv[2]] / runs[sys.argv[3]]:.2f}")
PY
}

# cpu_ratio JSON NAME_A NAME_B: CPU time (user + system of the command and every process it
# waited for, as hyperfine reports it) of A over B. Unlike wall time it does not move with
# what else the machine runs, so it tells a change in cost from a noisy neighbour.
cpu_ratio() {
    python3 - "$@" <<'PY'
import json, sys
cpu = {r["command"]: r["user"] + r["system"] for r in json.load(open(sys.argv[1]))["results"]}
print(f"{cpu[sys.argv[2]] / cpu[sys.argv[3]]:.2f}")
PY
}

# fake_internet: two network namespaces joined by a veth pair, as tests/common/net.rs
# builds. The host one (11.22.33.1) is where the benchmark runs (in_host CMD...); the
# internet has a DNS server on 11.22.33.2 that answers every name with 11.22.33.3, where the
# benchmark's servers go (in_internet CMD... &). The benchmark's copy of /etc resolves
# through that DNS. On exit every process in either namespace is killed (a server's pid
# may be a launcher's, not its own).
fake_internet() {
    unshare --net -- sleep 3600 & host_pid=$!
    unshare --net -- sleep 3600 & inet_pid=$!
    sleep 0.3
    host_ns=$(readlink /proc/$host_pid/ns/net)
    inet_ns=$(readlink /proc/$inet_pid/ns/net)
    trap 'kill_in_namespaces "$host_ns" "$inet_ns"; stop_trackers; rm -rf "$BENCH_DIR"' EXIT
    in_host sh -ec "
ip link set lo up; ip link add vh type veth peer name vi; ip link set vi netns $inet_pid
ip addr add 11.22.33.1/24 dev vh; ip link set vh up"
    in_internet sh -ec "
ip link set lo up; ip addr add 11.22.33.2/24 dev vi; ip addr add 11.22.33.3/24 dev vi; ip link set vi up"
    echo "nameserver 11.22.33.2" > "$BENCH_DIR/etc/resolv.conf"
    sed -i 's/^hosts:.*/hosts: files dns/' "$BENCH_DIR/etc/nsswitch.conf"
    in_internet python3 -c '
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("11.22.33.2", 53))
while True:
    d, p = s.recvfrom(512); end = d.index(b"\0", 12) + 5
    a = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton("11.22.33.3") if d[end-4:end-2] == b"\0\1" else b""
    s.sendto(d[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if a else 0, 0, 0) + d[12:end] + a, p)
' &
}

in_host() { nsenter --net=/proc/$host_pid/ns/net -- "$@"; }
in_internet() { nsenter --net=/proc/$inet_pid/ns/net -- "$@"; }

# kill_in_namespaces NS...: kills every process whose network namespace is one of NS
# (as readlink /proc/PID/ns/net names it).
kill_in_namespaces() {
    local p ns want
    for p in /proc/[0-9]*; do
        ns=$(readlink "$p/ns/net" 2>/dev/null) || continue
        for want in "$@"; do
            [ "$ns" = "$want" ] && kill "${p#/proc/}" 2>/dev/null
        done
    done
    return 0
}

# pool OUT IN...: one hyperfine JSON from several (rounds of the same commands): each
# command's times put together, mean, median, deviation, min and max recomputed, CPU time
# (user, system) weighted by runs. Rounds that alternate the commands keep a drift of the
# machine's speed (other tenants of the host) from landing on one command only.
pool() {
    python3 - "$@" <<'PY'
import json, statistics, sys
out, inputs = sys.argv[1], sys.argv[2:]
pooled = {}
for path in inputs:
    for r in json.load(open(path))["results"]:
        p = pooled.setdefault(r["command"], {"command": r["command"], "times": [], "cpu": []})
        p["times"] += r["times"]
        p["cpu"] += [(r["user"], r["system"])] * len(r["times"])
results = []
for p in pooled.values():
    t = p["times"]
    results.append({
        "command": p["command"], "times": t, "mean": statistics.mean(t),
        "stddev": statistics.stdev(t) if len(t) > 1 else 0.0,
        "median": statistics.median(t), "min": min(t), "max": max(t),
        "user": statistics.mean(u for u, _ in p["cpu"]),
        "system": statistics.mean(s for _, s in p["cpu"]),
    })
json.dump({"results": results}, open(out, "w"))
PY
}

# table JSON UNIT: a markdown table of a (pooled) hyperfine JSON like hyperfine's own, times
# in UNIT (ms or s), fastest first, relative to the fastest mean.
table() {
    python3 - "$@" <<'PY'
import json, sys
results = sorted(json.load(open(sys.argv[1]))["results"], key=lambda r: r["mean"])
scale = {"ms": 1000, "s": 1}[sys.argv[2]]
fastest = min(r["mean"] for r in results)
print(f"| Command | Mean [{sys.argv[2]}] | Min [{sys.argv[2]}] | Max [{sys.argv[2]}] | Relative |")
print("|:---|---:|---:|---:|---:|")
for r in results:
    f = lambda v: f"{v * scale:.1f}"
    print(f"| `{r['command']}` | {f(r['mean'])} ± {f(r['stddev'])} | {f(r['min'])} | {f(r['max'])} | {r['mean'] / fastest:.2f} |")
PY
}

# rounds_script PREFIX ROUNDS PER_ROUND WARMUP NAME COMMAND [NAME COMMAND]...: prints a bash
# script that runs ROUNDS rounds, each running every command PER_ROUND times (after WARMUP
# runs) in an order of its own (shuf), exporting PREFIX.ROUND.I.json for `pool`. The order
# changes from round to round because the command that runs first in a row pays for caches
# the others left cold.
rounds_script() {
    local prefix=$1 rounds=$2 per=$3 warmup=$4
    shift 4
    echo "set -e"
    echo "names=(); commands=()"
    while [ $# -gt 0 ]; do
        printf 'names+=(%q); commands+=(%q)\n' "$1" "$2"
        shift 2
    done
    cat <<SCRIPT
for round in \$(seq $rounds); do
    for i in \$(shuf -i 0-\$((\${#names[@]} - 1))); do
        hyperfine -N --style none --warmup $warmup --runs $per --export-json $prefix.\$round.\$i.json \\
            -n "\${names[\$i]}" "\${commands[\$i]}" </dev/null >/dev/null
    done
done
SCRIPT
}
