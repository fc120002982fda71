#!/usr/bin/env bash
# Builds the node installer's image offline and saves it as an OCI archive:
#   1. the static release binary (scripts/build-release.sh; cargo rebuilds only what changed),
#   2. an image FROM scratch holding only the two binaries, the plugin and the node agent
#      (Containerfile), built with podman
#      without network (--pull=never) and tagged localhost/mesh-redirect:<version from
#      Cargo.toml>, the name deploy/daemonset.yaml uses,
#   3. `podman save --format oci-archive` to <target dir>/image/mesh-redirect-<version>.oci.tar
#      (the target dir honours CARGO_TARGET_DIR).
# Prints the archive's path on stdout. Loading it into a cluster: deploy/README.md ("Image").
#
#   scripts/build-image.sh [--binary PATH] [--agent-binary PATH] [--archive PATH]
#     --binary PATH   put this statically linked plugin binary in the image instead of building one
#     --agent-binary PATH  the same for the agent (default: mesh-redirect-agent next to
#                     --binary when it is there, else built)
#     --archive PATH  write the archive there instead
#
# The image is stored in podman's storage: the user's, or the one that CONTAINERS_STORAGE_CONF
# names (the integration test uses a private one). Needs podman and jq (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

binary=
agent=
archive=
while (($#)); do
  case $1 in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --agent-binary) agent=${2:?--agent-binary needs a path}; shift 2 ;;
    --archive) archive=${2:?--archive needs a path}; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--agent-binary PATH] [--archive PATH]" >&2; exit 2 ;;
  esac
done
command -v podman >/dev/null || { echo "build-image: podman is not installed (scripts/setup.sh)" >&2; exit 2; }

meta=$(cargo metadata --no-deps --format-version 1 --offline)
version=$(jq -r '.packages[] | select(.name == "mesh-redirect") | .version' <<<"$meta")
target_dir=$(jq -r '.target_directory' <<<"$meta")
image=localhost/mesh-redirect:$version
archive=${archive:-$target_dir/image/mesh-redirect-$version.oci.tar}
start=$SECONDS

release=$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release
if [ -n "$binary" ] && [ -z "$agent" ] && [ -x "$(dirname "$binary")/mesh-redirect-agent" ]; then
  agent=$(dirname "$binary")/mesh-redirect-agent
fi
if [ -z "$binary" ] || [ -z "$agent" ]; then
  echo "build-image: building the static release binaries (scripts/build-release.sh)" >&2
  bash scripts/build-release.sh >/dev/null
  # build-release.sh's cargo writes under the target dir (CARGO_TARGET_DIR if set).
  binary=${binary:-$release/mesh-redirect}
  agent=${agent:-$release/mesh-redirect-agent}
fi
for b in "$binary" "$agent"; do
  [ -x "$b" ] || { echo "build-image: no executable at $b" >&2; exit 1; }
  # The image has no C library: the binaries must not need a loader.
  linkage=$(LC_ALL=C ldd "$b" 2>&1 || true)
  if ! grep -Eq 'not a dynamic executable|statically linked' <<<"$linkage"; then
    echo "build-image: $b is dynamically linked; use scripts/build-release.sh's static build" >&2
    exit 1
  fi
done

context=$(mktemp -d "${TMPDIR:-/tmp}/mesh-redirect-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/mesh-redirect"
cp "$agent" "$context/mesh-redirect-agent"
echo "build-image: building $image from scratch (no network)" >&2
# The creation time is the last commit's (SOURCE_DATE_EPOCH overrides): rebuilding the same
# binary gives the same image ID (the archive's tar headers still differ). No intermediate
# images are kept (--layers=false).
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
podman build --quiet --pull=never --network=none --layers=false --timestamp "$epoch" \
  --identity-label=false --build-arg "VERSION=$version" -f Containerfile -t "$image" \
  "$context" >/dev/null

mkdir -p "$(dirname "$archive")"
rm -f "$archive.tmp"
podman save --quiet --format oci-archive -o "$archive.tmp" "$image"
mv -f "$archive.tmp" "$archive"
echo "build-image: $image, $(podman image inspect -f '{{.Size}}' "$image") bytes;" \
  "archive $(stat -c %s "$archive") bytes; in $((SECONDS - start)) s" >&2
echo "$archive"
