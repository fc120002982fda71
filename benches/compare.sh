#!/usr/bin/env bash
# Whole processes, side by side: what one pod's redirect set-up costs with mesh-redirect and
# with what users run today, all for Istio's default sidecar configuration (CNI plugin
# defaults) with IPv4 and IPv6.
#
#   benches/compare.sh                # as root; RUNS=200 WARMUP=5 by default
#   RUNS=30 benches/compare.sh        # a quick look
#   BASE_BIN=/tmp/old/mesh-redirect benches/compare.sh   # also time another build (A/B)
#   BIN=path/to/mesh-redirect NO_FOOTPRINT=1 RAW=runs.tsv benches/compare.sh
#                                     # a given binary, no footprint, every run kept
#
# Method (benches/tools/interleave.c times the runs):
#   * interleaved run by run: round 1 runs every row once (A, B, C, …), round 2 again, …, so
#     that all rows see the same machine; timing all runs of one command and then the next
#     (hyperfine) lets a shared VM's drift and the kernel's asynchronous cleanup of deleted
#     namespaces land in the ratios. Each round starts at the next row, so no row always
#     follows the same one.
#   * every run in a fresh network namespace, created under a unique name with `lo` up after
#     the previous one was deleted, then SETTLE seconds of pause (untimed);
#   * two long-lived "holder" namespaces keep nf_tables and iptables-legacy hooks
#     registered for the whole run, as other pods do on a real node: otherwise the first
#     base chain of a family in the machine flips global static keys (code patching across
#     CPUs) and every run would measure that, for one side more than the other;
#   * every program and library the rows run is evicted from the page cache and read back
#     first, the same for all: a binary's page-cache state alone moved its start by 0.3 ms;
#   * per row: median and p95 (nearest rank) of its runs, and the median of its per-round
#     ratio to the first row (ours, nftables).
#
# Rows:
#   * mesh-redirect apply --netns NS --ipv6 --backend nftables: the release binary (the
#     reference of the ratios), and the same with --backend iptables-legacy
#   * a CNI ADD of our plugin (the same binary with CNI_COMMAND=ADD), static mode (settings
#     from the plugin configuration: no Kubernetes API call), nftables, IPv6 from the primary
#     plugin's dual-stack prevResult
#   * nft -f of Istio's own nftables transaction (`mesh-redirect render --ipv6` prints it)
#   * Istio's iptables sequence as its golden transcripts record it, legacy binaries, one
#     shell script per run (benches/istio/iptables-sequence.sh)
#   * one iptables-legacy-restore of the IPv4 rules: the floor of the legacy path
#   * /bin/true: process start
# Tools without a --netns option are started through benches/tools/nsexec.c (setns, then
# exec; a static binary built here), as a CNI plugin enters the pod's namespace before it
# forks them; the `nsexec -n NS /bin/true` row shows what that adds. The CNI ADD also goes
# through it, for its stdin and CNI_* variables (the timer runs no shell).
#
# Then the footprint: binary size and peak RSS of one apply.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/sbin:/sbin:$PATH"

RUNS=${RUNS:-200}
WARMUP=${WARMUP:-5}
# Deleting a namespace is asynchronous (the kernel's cleanup_net holds rtnl_lock and waits for
# RCU): give it this long before the next run is timed, so that as little as possible of the
# last one's cleanup is measured. The same for every row (interleaving shares what remains).
SETTLE=${SETTLE:-0.05}

[ "$(id -u)" = 0 ] || { echo "compare.sh: run as root (network namespaces)" >&2; exit 2; }
for tool in nft iptables-legacy-restore ip6tables-legacy-restore ip cc; do
  command -v "$tool" >/dev/null || { echo "compare.sh: needs $tool (scripts/setup.sh)" >&2; exit 2; }
done

work=$(mktemp -d /tmp/mesh-redirect-compare.XXXXXX)
NS="mrcmp$$"
NSPATH="/var/run/netns/$NS"
HOLD_NFT="mrcmp$$-hold-nft"
HOLD_XT="mrcmp$$-hold-xt"
cleanup() {
  for ns in "$NS" "$HOLD_NFT" "$HOLD_XT"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${BIN:-}" ]; then
  echo "building the release binary (static, as shipped: scripts/build-release.sh)..." >&2
  BIN="$(scripts/build-release.sh)"
fi
cc -O2 -static -o "$work/nsexec" benches/tools/nsexec.c
cc -O2 -o "$work/interleave" benches/tools/interleave.c
NSEXEC="$work/nsexec"
[ -z "${BASE_BIN:-}" ] || [ -x "$BASE_BIN" ] || { echo "compare.sh: BASE_BIN=$BASE_BIN is not executable" >&2; exit 2; }

# Istio's nftables transaction for the configuration, exactly as its nftables backend pipes it
# to `nft -f -` (the render conformance test checks the format against Istio's goldens).
"$BIN" render --ipv6 >"$work/istio.nft"

# The iptables payloads: the CNI plugin's default golden for IPv4, and its IPv6 form by the
# rules of docs/istio-semantics.md §7.2. Check the committed copies against the golden.
golden=integration/fixtures/conformance/istio/cni-plugin/basic.txt.golden
if [ -f "$golden" ]; then
  cmp -s "$golden" benches/istio/cni-default.v4.rules ||
    { echo "compare.sh: benches/istio/cni-default.v4.rules differs from $golden" >&2; exit 1; }
  sed -e 's#127\.0\.0\.6/32#::6/128#g' -e 's#127\.0\.0\.1/32#::1/128#g' "$golden" |
    cmp -s - benches/istio/cni-default.v6.rules ||
    { echo "compare.sh: benches/istio/cni-default.v6.rules is not the IPv6 form of $golden" >&2; exit 1; }
fi
SEQ="$PWD/benches/istio/iptables-sequence.sh"
V4="$PWD/benches/istio/cni-default.v4.rules"

# A CNI ADD as a runtime sends it after the primary plugin (its result as prevResult).
cat >"$work/cni.json" <<EOF
{"cniVersion":"1.0.0","name":"mesh-bench","type":"mesh-redirect","mode":"static","backend":"nftables","redirect":{"dualStack":true},"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"$NSPATH"}],"ips":[{"interface":0,"address":"10.88.50.8/24"},{"interface":0,"address":"fd00:88::8/64"}]}}
EOF
CNI_ENV=(CNI_COMMAND=ADD "CNI_CONTAINERID=bench$$" "CNI_NETNS=$NSPATH" CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin)

cat >"$work/fresh-netns" <<EOF
#!/bin/sh
ip netns del $NS 2>/dev/null && sleep $SETTLE
ip netns add $NS && ip -n $NS link set lo up
EOF
chmod +x "$work/fresh-netns"

# One sanity run of each in a fresh namespace: it must succeed and leave its rules.
"$work/fresh-netns"
"$BIN" apply --netns "$NS" --ipv6 --backend nftables 2>/dev/null
"$BIN" verify --netns "$NS" --ipv6 --backend nftables 2>/dev/null
"$work/fresh-netns"
"$work/fresh-netns"
"$BIN" apply --netns "$NS" --ipv6 --backend iptables-legacy 2>/dev/null
"$BIN" verify --netns "$NS" --ipv6 --backend iptables-legacy 2>/dev/null
"$work/fresh-netns"
"$NSEXEC" -i "$work/cni.json" "${CNI_ENV[@]}" "$BIN" >/dev/null 2>&1
"$BIN" verify --netns "$NS" --ipv6 --backend nftables 2>/dev/null
"$work/fresh-netns"
"$NSEXEC" -n "$NSPATH" "$(command -v nft)" -f "$work/istio.nft"
"$NSEXEC" -n "$NSPATH" "$(command -v nft)" list ruleset | grep -q 'jump istio-redirect'
"$work/fresh-netns"
"$NSEXEC" -n "$NSPATH" /bin/sh "$SEQ"
"$NSEXEC" -n "$NSPATH" "$(command -v ip6tables-legacy-save)" | grep -q -- '-A ISTIO_OUTPUT -d ::1/128 -j RETURN'

# The holders: hooks of both kinds stay registered in the machine for the whole run.
for ns in "$HOLD_NFT" "$HOLD_XT"; do ip netns add "$ns" && ip -n "$ns" link set lo up; done
"$BIN" apply --netns "$HOLD_NFT" --ipv6 --backend nftables 2>/dev/null
"$NSEXEC" -n "/var/run/netns/$HOLD_XT" /bin/sh "$SEQ"

rows="$work/rows.tsv"
: >"$rows"
row() { printf '%s\t%s\n' "$1" "$2" >>"$rows"; }
row "mesh-redirect apply --ipv6 --backend nftables" "$BIN apply --netns $NS --ipv6 --backend nftables"
[ -z "${BASE_BIN:-}" ] || row "BASE_BIN apply --ipv6 --backend nftables" "$BASE_BIN apply --netns $NS --ipv6 --backend nftables"
row "mesh-redirect apply --ipv6 --backend iptables-legacy" "$BIN apply --netns $NS --ipv6 --backend iptables-legacy"
row "mesh-redirect CNI ADD (static mode, nftables)" "$NSEXEC -i $work/cni.json ${CNI_ENV[*]} $BIN"
[ -z "${BASE_BIN:-}" ] || row "BASE_BIN CNI ADD (static mode, nftables)" "$NSEXEC -i $work/cni.json ${CNI_ENV[*]} $BASE_BIN"
row "nft -f (Istio's nftables transaction)" "$NSEXEC -n $NSPATH $(command -v nft) -f $work/istio.nft"
row "Istio iptables sequence (2 save, 2 restore --noflush, 2 save; legacy)" "$NSEXEC -n $NSPATH /bin/sh $SEQ"
row "iptables-legacy-restore --noflush (IPv4 only)" "$NSEXEC -n $NSPATH $(command -v iptables-legacy-restore) --noflush $V4"
row "/bin/true (process start)" "/bin/true"
row "nsexec -n NS /bin/true (launcher)" "$NSEXEC -n $NSPATH /bin/true"

# The page-cache state of an executable's file changes how fast it starts: the same bytes in
# two files started 1.71 and 1.43 ms here (a file whose cached pages were split up by earlier
# writes or reclaim faults in more slowly). So every program and library the rows run is
# evicted from the page cache and read back in one sequential pass first, the same for all.
fresh_page_cache() {
  local f
  for f in "$@"; do
    f=$(readlink -f "$f")
    dd if="$f" iflag=nocache count=0 status=none 2>/dev/null || true
    [ -f "$f" ] && cat "$f" >/dev/null
  done
  return 0
}
programs=$(cut -f2 "$rows" | tr ' ' '\n' | grep '^/' | sort -u | while read -r f; do [ -x "$f" ] && [ -f "$f" ] && echo "$f"; done)
programs="$programs $(command -v sh iptables-legacy-save ip6tables-legacy-save ip6tables-legacy-restore iptables-legacy-restore)"
# shellcheck disable=SC2086
libraries=$({ ldd $programs 2>/dev/null || true; } | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)
# shellcheck disable=SC2086
fresh_page_cache $programs $libraries

nrows=$(wc -l <"$rows")
settle_ms=$(awk -v s="$SETTLE" 'BEGIN { printf "%d", s * 1000 }')
echo "timing $nrows commands interleaved: $RUNS rounds (+$WARMUP warm-up), a fresh namespace per run..." >&2
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
stats=$("$work/interleave" -r "$RUNS" -w "$WARMUP" -p "$work/fresh-netns" -s "$settle_ms" \
  -o "${RAW:-$work/raw.tsv}" "$rows")
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
ours_med=$(echo "$stats" | head -1 | cut -f2)

echo
echo "Whole process, fresh namespace per run, Istio's default sidecar configuration (CNI"
echo "defaults) with IPv4 + IPv6; interleaved, $WARMUP warm-up + $RUNS rounds, holder namespaces."
echo "$(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r), Debian $(cat /etc/debian_version)"
echo "load average before: $load_before, after: $load_after"
echo
echo "| command | median | p95 | median vs ours | per-round ratio (median) |"
echo "|---|---|---|---|---|"
echo "$stats" | while IFS=$'\t' read -r name med p95 _ ratio; do
  awk -v n="$name" -v m="$med" -v p="$p95" -v om="$ours_med" -v r="$ratio" \
    'BEGIN { printf "| %s | %.2f ms | %.2f ms | %.2f× | %.2f× |\n", n, m, p, m / om, r }'
done

# Footprint.
peak_rss() { # the largest "Maximum resident set size" over 5 runs, in KiB
  local max=0 kb
  for _ in 1 2 3 4 5; do
    "$work/fresh-netns"
    kb=$( /usr/bin/time -v "$@" 2>&1 >/dev/null | awk '/Maximum resident set size/ {print $6}')
    [ "${kb:-0}" -gt "$max" ] && max=$kb
  done
  echo "$max"
}
echo
if [ -x /usr/bin/time ] && [ -z "${NO_FOOTPRINT:-}" ]; then
  large_i=$(seq 0 499 | awk '{ if ($1 % 2 == 0) printf "%s10.%d.%d.0/24", (NR > 1 ? "," : ""), int($1/2/256), int($1/2)%256; else printf ",fd00:0:%x::/48", int($1/2) }')
  large_x=$(seq 0 499 | awk '{ if ($1 % 2 == 0) printf "%s10.%d.%d.0/24", (NR > 1 ? "," : ""), 100 + int($1/2/256), int($1/2)%256; else printf ",fd00:64:%x::/48", int($1/2) }')
  large_b=$(seq -s, 1001 1200)
  large_u=$(seq -s, 2001 2016)
  echo "| footprint | value |"
  echo "|---|---|"
  echo "| mesh-redirect binary (release, stripped) | $(stat -c %s "$BIN") bytes ($(awk -v s="$(stat -c %s "$BIN")" 'BEGIN { printf "%.2f MiB", s / 1048576 }')) |"
  echo "| peak RSS, mesh-redirect apply --ipv6 --backend nftables (default) | $(peak_rss "$BIN" apply --netns "$NS" --ipv6 --backend nftables) KiB |"
  echo "| peak RSS, mesh-redirect apply --ipv6 --backend nftables (large: 500+500 CIDRs, 200 ports, 16 uids) | $(peak_rss "$BIN" apply --netns "$NS" --ipv6 --backend nftables -i "$large_i" -x "$large_x" -b "$large_b" -u "$large_u") KiB |"
  echo "| peak RSS, mesh-redirect apply --ipv6 --backend iptables-legacy (default) | $(peak_rss "$BIN" apply --netns "$NS" --ipv6 --backend iptables-legacy) KiB |"
  echo "| peak RSS, mesh-redirect CNI ADD (static mode, nftables) | $(peak_rss "$NSEXEC" -i "$work/cni.json" "${CNI_ENV[@]}" "$BIN") KiB |"
  echo "| peak RSS, nft -f (Istio's transaction) | $(peak_rss "$NSEXEC" -n "$NSPATH" "$(command -v nft)" -f "$work/istio.nft") KiB |"
  echo "| peak RSS, iptables-legacy-restore --noflush (IPv4) | $(peak_rss "$NSEXEC" -n "$NSPATH" "$(command -v iptables-legacy-restore)" --noflush "$V4") KiB |"
elif [ -z "${NO_FOOTPRINT:-}" ]; then
  echo "(footprint: /usr/bin/time is missing: apt-get install -y time)"
fi
