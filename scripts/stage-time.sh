#!/usr/bin/env bash
# Times the stages of `make test`, so every change can see what it costs.
#   stage-time.sh FILE NAME COMMAND...   runs COMMAND, appends "NAME<TAB>seconds<TAB>result" to FILE
#   stage-time.sh FILE --report          prints FILE as a table with the total
set -uo pipefail
file=$1
shift

if [ "$1" = --report ]; then
  echo
  echo "==== stage times ===="
  awk -F '\t' '{ printf "%-28s %6d s  %5.1f min  %s\n", $1, $2, $2 / 60, $3; total += $2 }
               END { printf "%-28s %6d s  %5.1f min\n", "total", total, total / 60 }' "$file"
  exit 0
fi

name=$1
shift
started=$(date +%s)
"$@"
status=$?
result=passed
[ "$status" -eq 0 ] || result="FAILED (exit $status)"
printf '%s\t%s\t%s\n' "$name" "$(($(date +%s) - started))" "$result" >> "$file"
exit "$status"
