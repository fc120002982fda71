#!/usr/bin/env bash
# Installs what building and testing mesh-redirect needs on Debian 12 (run as root).
# The product itself needs none of this at run time: the test suite uses nft, iptables-legacy
# and ip as oracles and to build throw-away namespaces, libnftnl/libmnl as the reference
# encoder in tests, strace for the no-fork test (hyperfine for one-off timings; the comparison
# script has its own interleaving timer, benches/tools/interleave.c);
# containerd (a CRI runtime the tests start themselves) and protobuf-compiler (protoc, for the
# dev-only CRI client crate k8s-cri) for integration/cri_containerd.rs.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(nftables iptables iproute2 libnftnl-dev libmnl-dev pkg-config hyperfine strace procps ca-certificates util-linux jq podman containernetworking-plugins busybox-static runc containerd protobuf-compiler)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  # The machine image ships rustup's toolchain; Debian's own cargo is the fallback.
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    apt-get install -y -qq --no-install-recommends cargo rustc >/dev/null
  fi
fi
modprobe nf_tables 2>/dev/null || true
echo "setup: $(nft --version), $(iptables-legacy --version), $(cargo --version)"
