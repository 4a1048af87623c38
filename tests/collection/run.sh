#!/usr/bin/env bash
# Adoption test: build the collection, install it into an unrelated project,
# and run headroom.pg.postgresql from there against a fresh lab container.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
container=headroom-collection-test
cleanup() { docker rm -f "$container" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

echo "collection: build"
(cd "$repo" && ansible-galaxy collection build --force --output-path "$work/dist" >/dev/null)
tarball=$(ls "$work"/dist/headroom-pg-*.tar.gz)

echo "collection: install $(basename "$tarball") into an unrelated project"
mkdir -p "$work/project"
cp "$repo/tests/collection/project/"* "$work/project/"
cd "$work/project"
unset ANSIBLE_CONFIG  # the project's own ansible.cfg, not the checkout's
# Galaxy is not reachable here: the collection's dependencies come from the pinned ansible package.
ansible-galaxy collection install --no-deps -p ./collections "$tarball" >/dev/null
test ! -e ./collections/ansible_collections/headroom/pg/collections  # the checkout's link stays out

echo "collection: run headroom.pg.postgresql against $container"
docker rm -f "$container" >/dev/null 2>&1 || true
docker run -d --name "$container" --cap-add SYS_ADMIN --cgroupns host \
  -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
  headroom/debian:12-baked /lib/systemd/systemd >/dev/null
ansible-playbook -i inventory.yml playbook.yml

echo "collection: the cluster answers"
[ "$(docker exec "$container" runuser -u postgres -- psql -XAtqc 'SELECT 1')" = 1 ]
echo "collection: ok"
