#!/bin/sh
# Prints, as JSON, what the sizing filter effective_resources needs: the host's
# memory and CPUs, and the raw cgroup limits on every level from the given
# postmaster's cgroup up to the root (cgroup v2 and v1). The filter decides.
# Usage: host_resources.sh [DATADIR]   (a stopped cluster: this shell's cgroup)
set -eu
pid=$$
if [ -n "${1:-}" ] && [ -r "$1/postmaster.pid" ]; then
  postmaster=$(head -n 1 "$1/postmaster.pid")
  [ -r "/proc/$postmaster/cgroup" ] && pid=$postmaster
fi

memory=$(awk '/^MemTotal:/ { printf "%.0f", $2 * 1024 }' /proc/meminfo)
cpus=$(getconf _NPROCESSORS_ONLN)

# Path of the process in the hierarchy that holds CONTROLLER (v1), or in the unified one (v2).
cgroup_path() {
  awk -F: -v c="$1" '{ n = split($2, cs, ","); for (i = 1; i <= n; i++) if (cs[i] == c) { print $3; exit } }' "/proc/$pid/cgroup"
}

# Reads the file FIRST (and SECOND, joined by a space) in DIR/PATH and in each parent, as JSON
# strings, each followed by a comma.
walk_up() {
  dir=$1 path=$2 first=$3 second=${4:-}
  while :; do
    f="$dir$path/$first"
    if [ -r "$f" ]; then
      value=$(cat "$f")
      [ -n "$second" ] && [ -r "$dir$path/$second" ] && value="$value $(cat "$dir$path/$second")"
      printf '"%s",' "$value"
    fi
    [ "$path" = "/" ] || [ -z "$path" ] && break
    path=$(dirname "$path")
  done
}

# Both hierarchies are read when both are mounted: a unified (v2) tree whose memory or cpu
# controller is not enabled can sit beside v1 hierarchies that hold the real limits.
mem="" cpu=""
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  path=$(awk -F: '$1 == "0" { print $3 }' "/proc/$pid/cgroup")
  mem=$(walk_up /sys/fs/cgroup "$path" memory.max)
  cpu=$(walk_up /sys/fs/cgroup "$path" cpu.max)
fi
if [ -r /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
  mem="$mem$(walk_up /sys/fs/cgroup/memory "$(cgroup_path memory)" memory.limit_in_bytes)"
fi
if [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
  cpu="$cpu$(walk_up /sys/fs/cgroup/cpu "$(cgroup_path cpu)" cpu.cfs_quota_us cpu.cfs_period_us)"
fi

printf '{"memory": %s, "cpus": %s, "cgroup_memory_limits": [%s], "cgroup_cpu_limits": [%s]}\n' \
  "$memory" "$cpus" "${mem%,}" "${cpu%,}"
