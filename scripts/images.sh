#!/usr/bin/env bash
# Builds the lab's systemd base images (Debian 12 and 13) once; later runs reuse them.
# Like the official Debian images (no procps, no sudo) plus python3 and systemd.
set -euo pipefail

declare -A suites=([12]=bookworm [13]=trixie)

for release in 12 13; do
  image="headroom/debian:${release}"
  if docker image inspect "$image" >/dev/null 2>&1; then
    echo "image $image: present"
    continue
  fi
  suite=${suites[$release]}
  echo "image $image: building from debian:${suite}"
  # The official base first; where no registry answers, build the root fs from Debian's packages.
  if ! printf 'FROM debian:%s\nRUN apt-get update && apt-get install -y --no-install-recommends python3 systemd systemd-sysv && rm -rf /var/lib/apt/lists/*\nCMD ["/lib/systemd/systemd"]\n' "$suite" \
      | timeout 120 docker build -q -t "$image" - >/dev/null 2>&1; then
    echo "image $image: no registry, using mmdebstrap"
    mmdebstrap --quiet --variant=minbase --include=python3,systemd,systemd-sysv "$suite" - \
      | docker import --change 'CMD ["/lib/systemd/systemd"]' - "$image" >/dev/null
  fi
done
