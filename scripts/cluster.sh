#!/usr/bin/env bash
# Runs the local 3-node cluster described by etc/n1.yaml..etc/n3.yaml.
#   scripts/cluster.sh start   set up ./.venv, start three daemons, wait for a leader, show status
#   scripts/cluster.sh stop    SIGTERM every node and wait for it to exit
#   scripts/cluster.sh status  storgctl status
# Pid and log files go to ./run/ (nN.pid, nN.log); data to ./data/nN.
# TLS is on: the first start makes ./certs/ (a CA, n1..n3 and admin certificates,
# storgctl certs init) and ./run/storg.env, which points storgctl at the admin's:
#   source .venv/bin/activate && source run/storg.env && storgctl status
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${STORG_VENV:-.venv}
RUN=run

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    if ! "$VENV/bin/python" -c 'import storg, twisted, yaml, cryptography, google_crc32c, prometheus_client' 2>/dev/null; then
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$VENV/bin/python" -m pip install -q -e .
    fi
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

certs() {
    if [ ! -f certs/ca.pem ]; then
        "$VENV/bin/storgctl" certs init certs --nodes n1,n2,n3 >/dev/null
        echo "made certs/: a CA, certificates for n1..n3 and admin (storgctl certs init)"
    fi
    mkdir -p "$RUN"
    cat > "$RUN/storg.env" <<ENV
export STORG_CA=$PWD/certs/ca.pem
export STORG_CERT=$PWD/certs/admin.pem
export STORG_KEY=$PWD/certs/admin-key.pem
ENV
    # shellcheck source=/dev/null
    source "$RUN/storg.env"
}

start() {
    setup
    certs
    for n in 1 2 3; do
        if running "$RUN/n$n.pid"; then
            echo "n$n already running (pid $(cat "$RUN/n$n.pid"))"
            continue
        fi
        "$VENV/bin/twistd" --pidfile "$RUN/n$n.pid" --logfile "$RUN/n$n.log" \
            storg --config "etc/n$n.yaml"
        echo "started n$n (pid $(cat "$RUN/n$n.pid"), log $RUN/n$n.log)"
    done
    deadline=$((SECONDS + 30))
    until "$VENV/bin/storgctl" --timeout 2 --json status 2>/dev/null | grep -q '"role": "leader"'; do
        if [ $SECONDS -ge $deadline ]; then
            echo "no leader after 30 s; see $RUN/n*.log" >&2
            exit 3
        fi
        sleep 0.2
    done
    "$VENV/bin/storgctl" status
}

stop() {
    for n in 1 2 3; do
        if running "$RUN/n$n.pid"; then
            pid=$(cat "$RUN/n$n.pid")
            kill -TERM "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            echo "stopped n$n"
        fi
    done
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) setup; certs; "$VENV/bin/storgctl" status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
