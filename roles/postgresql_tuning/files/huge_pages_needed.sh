#!/bin/sh
# Prints, as JSON, how many huge pages the cluster would need with its files and the given
# settings (postgres -C shared_memory_size_in_huge_pages, PostgreSQL 15+) and how many the
# kernel has free and reserved. postgres refuses -C of that value on a data directory whose
# server runs, so it reads a scratch copy of the control data.
# Usage: huge_pages_needed.sh BINDIR DATADIR CONFIG_FILE [-c name=value ...]
set -eu
bindir=$1 datadir=$2 config=$3
shift 3
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/global"
cp "$datadir/PG_VERSION" "$scratch/"
cp "$datadir/global/pg_control" "$scratch/global/"
if [ -f "$datadir/postgresql.auto.conf" ]; then cp "$datadir/postgresql.auto.conf" "$scratch/"; fi
chown -R postgres "$scratch"
chmod -R go-rwx "$scratch"
needed=$(runuser -u postgres -- "$bindir/postgres" -c "config_file=$config" -c "data_directory=$scratch" "$@" \
  -C shared_memory_size_in_huge_pages)
free=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
reserved=$(awk '/^HugePages_Rsvd:/ { print $2 }' /proc/meminfo)
printf '{"needed": %s, "free": %s, "reserved": %s}\n' "$needed" "${free:-0}" "${reserved:-0}"
