#!/usr/bin/env bash
# Everything `make test` and `make lab` need on a fresh Debian machine:
# a Docker engine that answers, and the lab's base images.
# Second runs find everything in place and return in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "headroom setup: $*" >&2; exit 1; }

docker_answers() { docker info >/dev/null 2>&1; }

if ! docker_answers; then
  if [ "$(id -u)" -ne 0 ]; then
    docker_answers || die "no Docker engine answers and this user is not root: start Docker (or run as root) and try again."
  fi
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "setup: installing docker.io and mmdebstrap from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io mmdebstrap >/dev/null
  fi
  if ! docker_answers; then
    echo "setup: starting dockerd in the background (log: /var/log/headroom-dockerd.log)"
    # Its own session: dockerd outlives the shell (and the process group) that ran make setup.
    setsid nohup dockerd >/var/log/headroom-dockerd.log 2>&1 </dev/null &
    for _ in $(seq 1 60); do docker_answers && break; sleep 1; done
    docker_answers || die "dockerd did not answer within 60 s; see /var/log/headroom-dockerd.log."
  fi
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || die "mmdebstrap is missing and this user is not root: install it (apt-get install mmdebstrap)."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi

scripts/images.sh
