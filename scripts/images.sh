#!/usr/bin/env bash
# Builds the lab's systemd images from Debian's archive with mmdebstrap, once per machine.
#
#   headroom/debian:<release>        bare: python3 and systemd only, like the official Debian
#                                    images (no procps, no sudo); the default scenario installs
#                                    PostgreSQL on it, proving the install from nothing.
#   headroom/debian:<release>-baked  the same plus every package the roles and tests install,
#                                    so scenarios and the lab skip apt. PgBouncer's and
#                                    pgpool-II's units are left disabled, as on a host where the
#                                    package was just installed and the role has not configured
#                                    it yet.
#
# Each image carries the hash of its recipe (suite, packages, hooks) as a label and is
# rebuilt only when the recipe changes. IMAGES="12 forky" limits the releases built.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A suites=([12]=bookworm [13]=trixie [forky]=forky)
releases=${IMAGES:-12 13 forky}

base_packages=python3,systemd,systemd-sysv
# What the roles install (postgresql, pgbouncer, pgpool2, procps for the units' /bin/kill, psql)
# and the tests use (pgbench comes with the server package; python3-psycopg for a driver's
# prepared statements through PgBouncer, molecule/pgbouncer).
baked_packages=$base_packages,postgresql,postgresql-client,pgbouncer,pgpool2,procps,python3-psycopg

recipe_label=org.headroom.recipe

build() {
  local image=$1 suite=$2 packages=$3 hooks=("${@:4}")
  local recipe
  recipe=$(printf '%s\n' "$suite" "$packages" "${hooks[@]}" | sha256sum | cut -c1-16)
  if [ "$(docker image inspect --format "{{ index .Config.Labels \"$recipe_label\" }}" "$image" 2>/dev/null)" = "$recipe" ]; then
    echo "image $image: up to date"
    return
  fi
  echo "image $image: building from Debian $suite"
  local started=$SECONDS
  # testing's Release files can be past their Valid-Until date on a mirror; the option stays in
  # the image (/etc/apt/apt.conf.d/99mmdebstrap) so apt inside the containers accepts them too.
  local aptopts=()
  [ "$suite" = forky ] && aptopts=(--aptopt='Acquire::Check-Valid-Until "false"')
  mmdebstrap --quiet --variant=minbase "${aptopts[@]}" --include="$packages" "${hooks[@]}" "$suite" - \
    | docker import --change 'CMD ["/lib/systemd/systemd"]' --change "LABEL $recipe_label=$recipe" - "$image" >/dev/null
  echo "image $image: built in $((SECONDS - started)) s"
}

# One release's two images, bare then baked.
build_release() {
  local release=$1 suite=${suites[$1]}
  local hooks=()
  # systemd 258+ (forky) needs cgroup v2: its containers start on scripts/cgroup2-init.
  [ "$suite" = forky ] && hooks=(--customize-hook="copy-in scripts/cgroup2-init /usr/local/sbin"
                                 --customize-hook="# cgroup2-init $(sha256sum < scripts/cgroup2-init)")
  build "headroom/debian:$release" "$suite" "$base_packages" "${hooks[@]}"
  # shellcheck disable=SC2016 # $1 is mmdebstrap's, expanded by the hook's shell
  build "headroom/debian:$release-baked" "$suite" "$baked_packages" "${hooks[@]}" \
    --customize-hook='chroot "$1" systemctl disable --quiet pgbouncer.service pgpool2.service'
}

# The releases build side by side (mostly downloads and unpacking: a fresh machine builds all
# six in about the time of the slowest release); any failed build fails the script.
pids=()
for release in $releases; do
  : "${suites[$release]:?"unknown release $release (known: ${!suites[*]})"}"
  build_release "$release" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
exit "$status"
