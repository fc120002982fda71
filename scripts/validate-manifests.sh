#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/ offline, against the Kubernetes OpenAPI
# schema, with kubernetes-validate (PyPI) in --strict mode (unknown fields are errors).
#
#   scripts/validate-manifests.sh [DIR]        # DIR defaults to deploy/ next to this script
#
# Exits 0 only if every object in every *.yaml/*.yml of DIR (kustomization.yaml aside)
# passes. Besides the schema it checks what the schema cannot see: YAML that parses
# (no duplicate keys), one object per document with apiVersion/kind/metadata.name, no two
# objects with the same identity, references between the objects (namespace, service
# account, ConfigMap, ClusterRole, volumes) resolving inside DIR, and kustomization.yaml
# listing exactly the manifest files (it is a kustomize file, not a Kubernetes object, so it
# is checked here rather than fed to the schema validator). A kind or apiVersion the schema
# does not know is an error too (kubernetes-validate only warns about it).
#
# kubernetes-validate is installed with pip into a virtualenv under
# ${MESH_REDIRECT_CACHE_DIR:-~/.cache/mesh-redirect} on first use (PyPI is the only network
# access); Debian's python3-venv is installed with apt-get if venv is unusable. Runs as root
# on Debian 12.
#   K8S_VERSION=1.33 scripts/validate-manifests.sh   # validate against another version
set -euo pipefail

KV_VERSION=1.37.0                   # kubernetes-validate, pinned
K8S_VERSION=${K8S_VERSION:-1.37.0}  # the newest schema kubernetes-validate 1.37.0 ships

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${1:-$here/../deploy}
[ -d "$dir" ] || { echo "validate-manifests: no such directory: $dir" >&2; exit 2; }
dir=$(cd "$dir" && pwd)
cache=${MESH_REDIRECT_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/mesh-redirect}
venv=$cache/kubernetes-validate-$KV_VERSION
start=$SECONDS

make_venv() { # $1: python interpreter
  rm -rf "$venv"
  "$1" -m venv "$venv" >/dev/null 2>&1
}

if [ ! -f "$venv/.complete" ] || ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  echo "validate-manifests: installing kubernetes-validate==$KV_VERSION into $venv"
  mkdir -p "$cache"
  py=$(command -v python3 || true)
  if [ -z "$py" ] || ! make_venv "$py"; then
    # Debian's python3 ships venv without ensurepip unless python3-venv is installed.
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      echo "validate-manifests: python3 -m venv unusable; installing python3-venv with apt-get"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
      make_venv /usr/bin/python3 || { echo "validate-manifests: cannot create a virtualenv" >&2; exit 2; }
    else
      echo "validate-manifests: python3 -m venv does not work; install python3-venv" >&2
      exit 2
    fi
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KV_VERSION"
  touch "$venv/.complete"
fi
kv=$venv/bin/kubernetes-validate
got=$("$kv" --version)
[ "$got" = "$KV_VERSION" ] || { echo "validate-manifests: kubernetes-validate $got, expected $KV_VERSION" >&2; exit 2; }

manifests=()
while IFS= read -r f; do manifests+=("$f"); done < <(
  find "$dir" -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) \
    ! -name kustomization.yaml ! -name kustomization.yml ! -name Kustomization | LC_ALL=C sort)
if ((${#manifests[@]} == 0)); then
  echo "validate-manifests: no manifests in $dir" >&2
  exit 1
fi

# 1. Structure, identities, references, kustomization.yaml (with the venv's PyYAML).
structure_failed=0
objects=$("$venv/bin/python" - "$dir" "${manifests[@]}" <<'PY'
import os, sys
import yaml

class Loader(yaml.SafeLoader):
    pass

def no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, "duplicate key %r" % (key,), key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)

Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, no_duplicates)

directory, files = sys.argv[1], sys.argv[2:]
errors = []
objs = []  # (file, doc index, object)
for path in files:
    try:
        with open(path) as f:
            docs = list(yaml.load_all(f, Loader=Loader))
    except yaml.YAMLError as e:
        errors.append("%s: invalid YAML: %s" % (os.path.relpath(path, directory), e))
        continue
    n = 0
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        n += 1
        where = "%s (document %d)" % (os.path.relpath(path, directory), i + 1)
        if not isinstance(doc, dict):
            errors.append("%s: not a mapping" % where)
            continue
        meta = doc.get("metadata")
        if not (isinstance(doc.get("apiVersion"), str) and isinstance(doc.get("kind"), str)
                and isinstance(meta, dict) and isinstance(meta.get("name"), str)):
            errors.append("%s: needs apiVersion, kind and metadata.name" % where)
            continue
        if doc["kind"].endswith("List"):
            errors.append("%s: %s: put each object in its own document" % (where, doc["kind"]))
            continue
        objs.append((where, doc))
    if n == 0:
        errors.append("%s: holds no object" % os.path.relpath(path, directory))

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
                  "CustomResourceDefinition", "StorageClass", "PersistentVolume", "Node",
                  "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                  "APIService", "RuntimeClass", "IngressClass"}
index = {}
for where, o in objs:
    group = o["apiVersion"].rsplit("/", 1)[0] if "/" in o["apiVersion"] else ""
    ns = None if o["kind"] in CLUSTER_SCOPED else o["metadata"].get("namespace")
    if o["kind"] not in CLUSTER_SCOPED and not ns:
        errors.append("%s: %s/%s: namespaced object without metadata.namespace"
                      % (where, o["kind"], o["metadata"]["name"]))
    if o["kind"] in CLUSTER_SCOPED and "namespace" in o["metadata"]:
        errors.append("%s: %s is cluster-scoped but has metadata.namespace" % (where, o["kind"]))
    key = (group, o["kind"], ns, o["metadata"]["name"])
    if key in index:
        errors.append("%s: %s/%s defined twice (also in %s)"
                      % (where, o["kind"], o["metadata"]["name"], index[key]))
    index[key] = where

def have(kind, name, ns=None):
    return any(k[1] == kind and k[3] == name and k[2] == ns for k in index)

for where, o in objs:
    ns = o["metadata"].get("namespace")
    name = "%s/%s" % (o["kind"], o["metadata"]["name"])
    if ns and not have("Namespace", ns):
        errors.append("%s: %s: namespace %r is not defined here" % (where, name, ns))
    if o["kind"] in ("ClusterRoleBinding", "RoleBinding"):
        ref = o.get("roleRef") or {}
        rns = None if ref.get("kind") == "ClusterRole" else ns
        if not have(ref.get("kind"), ref.get("name"), rns):
            errors.append("%s: %s: roleRef %s/%s is not defined here"
                          % (where, name, ref.get("kind"), ref.get("name")))
        for s in o.get("subjects") or []:
            if s.get("kind") == "ServiceAccount" and not have(
                    "ServiceAccount", s.get("name"), s.get("namespace", ns)):
                errors.append("%s: %s: subject ServiceAccount %s/%s is not defined here"
                              % (where, name, s.get("namespace", ns), s.get("name")))
    pod = None
    if o["kind"] in ("DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job"):
        tmpl = (o.get("spec") or {}).get("template") or {}
        pod = tmpl.get("spec")
        sel = ((o.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        for k, v in sel.items():
            if labels.get(k) != v:
                errors.append("%s: %s: selector %s=%s does not match the pod template's labels"
                              % (where, name, k, v))
    elif o["kind"] == "Pod":
        pod = o.get("spec")
    if isinstance(pod, dict):
        sa = pod.get("serviceAccountName")
        if sa and sa != "default" and not have("ServiceAccount", sa, ns):
            errors.append("%s: %s: serviceAccountName %r is not defined here" % (where, name, sa))
        volumes = {v.get("name") for v in pod.get("volumes") or []}
        for v in pod.get("volumes") or []:
            cm = (v.get("configMap") or {}).get("name")
            if cm and not have("ConfigMap", cm, ns):
                errors.append("%s: %s: volume ConfigMap %r is not defined here" % (where, name, cm))
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    errors.append("%s: %s: container %s mounts undefined volume %r"
                                  % (where, name, c.get("name"), m.get("name")))
            for e in c.get("envFrom") or []:
                ref = (e.get("configMapRef") or {})
                if ref.get("name") and not ref.get("optional") and not have("ConfigMap", ref["name"], ns):
                    errors.append("%s: %s: envFrom ConfigMap %r is not defined here"
                                  % (where, name, ref["name"]))
            for e in c.get("env") or []:
                ref = ((e.get("valueFrom") or {}).get("configMapKeyRef") or {})
                if ref.get("name") and not ref.get("optional") and not have("ConfigMap", ref["name"], ns):
                    errors.append("%s: %s: env %s: ConfigMap %r is not defined here"
                                  % (where, name, e.get("name"), ref["name"]))

# kustomization.yaml: a kustomize file, not a Kubernetes object.
kpath = "kustomization.yaml"
if os.path.exists(os.path.join(directory, kpath)):
    try:
        with open(os.path.join(directory, kpath)) as f:
            k = yaml.load(f, Loader=Loader)
    except yaml.YAMLError as e:
        errors.append("%s: invalid YAML: %s" % (kpath, e))
        k = None
    if isinstance(k, dict):
        if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
            errors.append("%s: needs apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization" % kpath)
        known = {"apiVersion", "kind", "metadata", "resources", "images", "labels", "commonLabels",
                 "commonAnnotations", "namespace", "namePrefix", "nameSuffix", "patches",
                 "configMapGenerator", "secretGenerator", "generatorOptions", "components",
                 "replicas", "buildMetadata"}
        for key in sorted(set(k) - known):
            errors.append("%s: unexpected key %r" % (kpath, key))
        res = k.get("resources") or []
        if len(res) != len(set(res)):
            errors.append("%s: a resource is listed twice" % kpath)
        listed = set(res)
        present = {os.path.basename(p) for p in files}
        for r in sorted(listed - present):
            errors.append("%s: lists %r, which is not a manifest here" % (kpath, r))
        for r in sorted(present - listed):
            errors.append("%s: does not list %r (kubectl apply -k would skip it)" % (kpath, r))
    elif k is not None:
        errors.append("%s: not a mapping" % kpath)

for e in errors:
    print("ERROR " + e, file=sys.stderr)
if errors:
    sys.exit(1)
print(len(objs))
PY
) || { structure_failed=1; objects=; }

# 2. The schema, strict (run even when step 1 failed, to report everything at once). Any
#    line other than "INFO ... passed" is a failure: a WARN means that no schema was found
#    for the kind/apiVersion, i.e. the object was not validated at all.
rc=0
out=$("$kv" --strict -k "$K8S_VERSION" "${manifests[@]}" 2>&1) || rc=$?
printf '%s\n' "$out" | sed "s#$dir/##g"
passed=$(printf '%s\n' "$out" | grep -c '^INFO .* passed for resource ' || true)
other=$(printf '%s\n' "$out" | grep -vc '^INFO .* passed for resource ' || true)
if ((structure_failed)); then
  echo "validate-manifests: FAILED: see the ERROR lines above" >&2
  exit 1
fi
if ((rc != 0 || other != 0 || passed != objects)); then
  echo "validate-manifests: FAILED: $passed of $objects objects passed the schema (exit $rc)" >&2
  exit 1
fi

echo "validate-manifests: OK: $objects objects in ${#manifests[@]} files valid against" \
  "Kubernetes $K8S_VERSION (kubernetes-validate $KV_VERSION --strict), in $((SECONDS - start)) s"
