#!/usr/bin/env bash
# Make sure a Docker engine answers, for the Molecule scenarios and the demo.
# Installs docker.io and debootstrap (the local image builder's tool) when missing,
# and starts dockerd in the background when no engine answers (machines without
# systemd, like CI's). Its networks come from the benchmark range 198.18.0.0/15
# (bridge 198.19.0.1/24, pool 198.19.0.0/16), never from a private range.
# Safe to run again: it installs nothing that is there and starts no second dockerd.
# Used by .ci/run and `make demo`. Needs root for anything it has to install or start.
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v iptables >/dev/null || need+=(iptables)
command -v nsenter >/dev/null || need+=(util-linux)
# The demo and the fleet scenarios watch the VIP from the host (nsenter + ip monitor).
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing: ${need[*]} (run as root, or install them with apt-get)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}"
fi

if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "no Docker engine answers (start one, or run as root to start dockerd here)" >&2
        exit 1
    fi
    log=/var/log/fleetproxy-dockerd.log
    echo "starting dockerd (log: $log)"
    nohup dockerd --bip 198.19.0.1/24 --default-address-pool base=198.19.0.0/16,size=24 \
        >"$log" 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -n 30 "$log" >&2; exit 1; }
fi
