# Shared by the benchmark scripts: a hermetic host view (private mount namespace over a
# throwaway copy of /etc and private state and temp directories), like the tests use.
# Usage: in_sandbox SCRIPT  (runs bash -c SCRIPT as root inside the namespace, with $BIN set)

bench_setup() {
    [ "$(id -u)" = 0 ] || { echo "benchmarks create accounts: run as root" >&2; exit 1; }
    command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 1; }
    cd "$(dirname "$0")/.."
    cargo build --release --locked -q
    BENCH_DIR=$(mktemp -d /var/cache/agentuser-bench.XXXXXX)
    trap 'rm -rf "$BENCH_DIR"' EXIT
    chmod 755 "$BENCH_DIR"
    cp -a /etc "$BENCH_DIR/etc"
    mkdir -p "$BENCH_DIR/state" "$BENCH_DIR/home" "$BENCH_DIR/bin"
    mkdir -m 1777 "$BENCH_DIR/tmp" "$BENCH_DIR/vartmp" "$BENCH_DIR/shm"
    install -m 4755 "${CARGO_TARGET_DIR:-target}/release/agentuser" "$BENCH_DIR/bin/agentuser"
    install -m 644 pam/agentuser "$BENCH_DIR/etc/pam.d/agentuser"
    BIN=$BENCH_DIR/bin/agentuser
    export BIN BENCH_DIR
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
