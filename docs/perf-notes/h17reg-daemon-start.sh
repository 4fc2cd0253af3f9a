#!/usr/bin/env bash
# A daemon holding N feeds (1 KiB each, all shared in one namespace): time from start
# until its control socket answers (`replic8 peers`), its RSS after idling, and how long
# `status` and `feed list` take (the first after a start opens each feed once).
# Usage: N=100000 BIN=target/release/replic8 docs/perf-notes/h17reg-daemon-start.sh
set -euo pipefail
BIN=${BIN:-target/release/replic8}
N=${N:-100000}
IDLE=${IDLE:-20}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
# The bench's writer writes the feeds and their shares, starts a node on them, shares
# each, prints one line and (its standard input closed) stops.
prep_start=$(date +%s.%N)
"$BIN" bench-peer --dir "$DIR" --feeds "$N" --bytes-per-feed 1024 --block-size 1024 \
    </dev/null >/dev/null
echo "prep_seconds $(echo "$(date +%s.%N) - $prep_start" | bc)"
echo "files_in_feeds_dir $(find "$DIR/feeds" -type f | wc -l)"
start=$(date +%s.%N)
"$BIN" --data-dir "$DIR" daemon --no-dht --no-lan --listen 127.0.0.1:0 2>/dev/null &
pid=$!
until "$BIN" --data-dir "$DIR" peers >/dev/null 2>&1; do sleep 0.02; done
echo "ready_seconds $(echo "$(date +%s.%N) - $start" | bc)"
sleep "$IDLE"
echo "idle_rss_kib $(awk '/VmRSS/ {print $2}' /proc/$pid/status)"
for what in status "feed list"; do
    t=$(date +%s.%N)
    "$BIN" --data-dir "$DIR" $what >/dev/null
    echo "first_${what// /_}_seconds $(echo "$(date +%s.%N) - $t" | bc)"
done
t=$(date +%s.%N)
"$BIN" --data-dir "$DIR" status >/dev/null
echo "second_status_seconds $(echo "$(date +%s.%N) - $t" | bc)"
sleep "$IDLE"
echo "idle_rss_after_listing_kib $(awk '/VmRSS/ {print $2}' /proc/$pid/status)"
echo "peak_rss_kib $(awk '/VmHWM/ {print $2}' /proc/$pid/status)"
kill "$pid"
wait "$pid" || true
