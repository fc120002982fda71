#!/bin/sh
# Istio's iptables sequence for one sidecar pod with IPv6, as its golden transcripts record it
# (tools/istio-iptables/pkg/capture/testdata/ipv6-*.golden): save both families (drift check),
# restore the IPv4 and the IPv6 payload with --noflush, save both again (final log). Payloads:
# the CNI plugin's default (cni-plugin/basic.txt.golden) and its IPv6 form
# (docs/istio-semantics.md §7.2). Legacy binaries. Runs in the pod's namespace (the caller
# enters it).
set -e
d=${0%/*}
iptables-legacy-save >/dev/null
ip6tables-legacy-save >/dev/null
iptables-legacy-restore --noflush "$d/cni-default.v4.rules"
ip6tables-legacy-restore --noflush "$d/cni-default.v6.rules"
iptables-legacy-save >/dev/null
ip6tables-legacy-save >/dev/null
