#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/ offline, against the Kubernetes OpenAPI
# schema, with kubernetes-validate (PyPI) in --strict mode (unknown fields are errors), and
# each kustomize overlay under deploy/overlays/ as built.
#
#   scripts/validate-manifests.sh [DIR]        # DIR defaults to deploy/ next to this script
#
# Exits 0 only if every object in every *.yaml/*.yml of DIR (kustomization.yaml aside)
# passes, and so does every object of every overlay DIR/overlays/NAME/ once built. Besides
# the schema it checks what the schema cannot see: YAML that parses (no duplicate keys), one
# object per document with apiVersion/kind/metadata.name, no two objects with the same
# identity, references between the objects (namespace, service account, ConfigMap,
# ClusterRole, volumes) resolving inside the set, the API server's own securityContext rules
# (allowPrivilegeEscalation: false with privileged or CAP_SYS_ADMIN), and kustomization.yaml
# listing exactly the manifest files of DIR (it is a kustomize file, not a Kubernetes object,
# so it is checked here rather than fed to the schema validator; subdirectories such as
# overlays/ are not the base's business). A kind or apiVersion the schema does not know is
# an error too (kubernetes-validate only warns about it).
# For the node agent's DaemonSet (`mesh-redirect-agent`) it also checks that the privileges
# match its settings (REPAIR_MODE, REMOVE_TAINT; deploy/README.md, "Profiles"): every mode
# but off has hostPID, the capabilities SYS_ADMIN, SYS_PTRACE, NET_ADMIN, NET_RAW and RBAC
# for Events; label needs `patch` and delete `delete` on pods; REMOVE_TAINT=true `get` and
# `patch` on nodes; off with REMOVE_TAINT=false has no hostPID, no added capability and
# exactly `get`, `list`, `watch` on pods. And that it tolerates mesh-redirect.io/not-ready.
#
# Overlays are built here, since kustomize is not installed: a subset of kustomize (a
# kustomization's `resources`, files or directories holding a kustomization, recursively;
# `patches` in JSON 6902 form with a `target` of group/version/kind/name/namespace, applied
# with the `jsonpatch` package; `images`). Any other kustomization field in an overlay is an
# error, not something silently skipped, as is a patch that matches no object.
#
# kubernetes-validate and jsonpatch are installed with pip into a virtualenv under
# ${MESH_REDIRECT_CACHE_DIR:-~/.cache/mesh-redirect} on first use (PyPI is the only network
# access); Debian's python3-venv is installed with apt-get if venv is unusable. Runs as root
# on Debian 12.
#   K8S_VERSION=1.33 scripts/validate-manifests.sh   # validate against another version
set -euo pipefail

KV_VERSION=1.37.0                   # kubernetes-validate, pinned
JP_VERSION=1.48                     # jsonpatch (overlays' JSON 6902 patches), pinned
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
    "kubernetes-validate==$KV_VERSION" "jsonpatch==$JP_VERSION"
  touch "$venv/.complete"
fi
jsonpatch_version() {
  "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("jsonpatch"))' 2>/dev/null || true
}
if [ "$(jsonpatch_version)" != "$JP_VERSION" ]; then # a venv made before overlays were checked
  echo "validate-manifests: installing jsonpatch==$JP_VERSION into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "jsonpatch==$JP_VERSION"
fi
kv=$venv/bin/kubernetes-validate
got=$("$kv" --version)
[ "$got" = "$KV_VERSION" ] || { echo "validate-manifests: kubernetes-validate $got, expected $KV_VERSION" >&2; exit 2; }
got=$(jsonpatch_version)
[ "$got" = "$JP_VERSION" ] || { echo "validate-manifests: jsonpatch $got, expected $JP_VERSION" >&2; exit 2; }


tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The checks beyond the schema, and the overlay build, in the venv's Python (PyYAML comes
# with kubernetes-validate):
#   check.py check ROOT KUSTOMIZATION_DIR|- FILE...   structure, references, profile; prints
#                                                    the number of objects
#   check.py build OVERLAY_DIR OUT_DIR                writes each built object to its own file
cat >"$tmp/check.py" <<'PY'
import os, re, sys
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

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
                  "CustomResourceDefinition", "StorageClass", "PersistentVolume", "Node",
                  "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                  "APIService", "RuntimeClass", "IngressClass"}
WORKLOADS = ("DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job")
# The node agent's settings and what each needs (deploy/README.md, "Profiles").
AGENT = "mesh-redirect-agent"
TAINT = ("mesh-redirect.io/not-ready", "NoSchedule")
REPAIR_MODES = ("repair", "label", "delete", "off")
RECONCILE_CAPS = {"SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "NET_RAW"}

FROM = "# built from: "
errors = []

def load_documents(path, shown):
    """(where, object) of every non-empty document of a file; errors noted."""
    try:
        with open(path) as f:
            docs = list(yaml.load_all(f, Loader=Loader))
    except (OSError, yaml.YAMLError) as e:
        errors.append("%s: invalid YAML: %s" % (shown, e))
        return []
    with open(path) as f:  # a built object names where it came from
        first = f.readline()
    if first.startswith(FROM):
        shown = first[len(FROM):].strip()
    out = []
    for i, doc in enumerate(docs):
        if doc is not None:
            out.append((shown if first.startswith(FROM) else "%s (document %d)" % (shown, i + 1), doc))
    if not out:
        errors.append("%s: holds no object" % shown)
    return out

def api_group(o):
    return o["apiVersion"].rsplit("/", 1)[0] if "/" in o["apiVersion"] else ""

def pod_spec(o):
    if o["kind"] in WORKLOADS:
        return ((o.get("spec") or {}).get("template") or {}).get("spec")
    if o["kind"] == "Pod":
        return o.get("spec")
    return None

def containers(pod):
    return (pod.get("initContainers") or []) + (pod.get("containers") or [])

# ---- structure and references -------------------------------------------------------------

def check_objects(docs):
    objs = []
    for where, doc in docs:
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
    return objs

def check_references(objs):
    index = {}
    for where, o in objs:
        ns = None if o["kind"] in CLUSTER_SCOPED else o["metadata"].get("namespace")
        if o["kind"] not in CLUSTER_SCOPED and not ns:
            errors.append("%s: %s/%s: namespaced object without metadata.namespace"
                          % (where, o["kind"], o["metadata"]["name"]))
        if o["kind"] in CLUSTER_SCOPED and "namespace" in o["metadata"]:
            errors.append("%s: %s is cluster-scoped but has metadata.namespace" % (where, o["kind"]))
        key = (api_group(o), o["kind"], ns, o["metadata"]["name"])
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
        if o["kind"] in WORKLOADS:
            tmpl = (o.get("spec") or {}).get("template") or {}
            sel = ((o.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            labels = (tmpl.get("metadata") or {}).get("labels") or {}
            for k, v in sel.items():
                if labels.get(k) != v:
                    errors.append("%s: %s: selector %s=%s does not match the pod template's labels"
                                  % (where, name, k, v))
        pod = pod_spec(o)
        if not isinstance(pod, dict):
            continue
        sa = pod.get("serviceAccountName")
        if sa and sa != "default" and not have("ServiceAccount", sa, ns):
            errors.append("%s: %s: serviceAccountName %r is not defined here" % (where, name, sa))
        volumes = {v.get("name") for v in pod.get("volumes") or []}
        for v in pod.get("volumes") or []:
            cm = (v.get("configMap") or {}).get("name")
            if cm and not have("ConfigMap", cm, ns):
                errors.append("%s: %s: volume ConfigMap %r is not defined here" % (where, name, cm))
        for c in containers(pod):
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
            # The API server's ValidateSecurityContext, which no schema expresses.
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is False:
                if sc.get("privileged") is True:
                    errors.append("%s: %s: container %s: the API refuses allowPrivilegeEscalation: "
                                  "false with privileged: true" % (where, name, c.get("name")))
                if "CAP_SYS_ADMIN" in ((sc.get("capabilities") or {}).get("add") or []):
                    errors.append("%s: %s: container %s: the API refuses allowPrivilegeEscalation: "
                                  "false with capabilities.add CAP_SYS_ADMIN (spell it SYS_ADMIN)"
                                  % (where, name, c.get("name")))

# ---- the node agent's profile ---------------------------------------------------------------

def tolerates(tolerations, key, effect):
    for t in tolerations or []:
        if t.get("effect") not in (None, "", effect):
            continue
        op = t.get("operator") or "Equal"
        if op == "Exists" and t.get("key") in (None, "", key):
            return True
        if op == "Equal" and t.get("key") == key and t.get("value") in (None, ""):
            return True
    return False

def granted(objs, sa, ns):
    """The RBAC rules a service account gets from the bindings and roles in the set."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for _, o in objs if o["kind"] in ("ClusterRole", "Role")}
    rules = []
    for _, b in objs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa
                   and s.get("namespace", b["metadata"].get("namespace")) == ns
                   for s in b.get("subjects") or []):
            continue
        ref = b.get("roleRef") or {}
        rns = None if ref.get("kind") == "ClusterRole" else b["metadata"].get("namespace")
        role = roles.get((ref.get("kind"), rns, ref.get("name")))
        if role:
            rules += role.get("rules") or []
    return rules

def allows(rules, group, resource, verb):
    return any(group in (r.get("apiGroups") or []) or "*" in (r.get("apiGroups") or [])
               for r in rules
               if (resource in (r.get("resources") or []) or "*" in (r.get("resources") or []))
               and (verb in (r.get("verbs") or []) or "*" in (r.get("verbs") or [])))

def agent_setting(c, configmaps, name, default):
    """A setting's value as the container sees it: env beats envFrom; None when not literal."""
    for e in c.get("env") or []:
        if e.get("name") == name:
            return e.get("value") if "value" in e else None
    value = default
    for e in c.get("envFrom") or []:
        data = configmaps.get((e.get("configMapRef") or {}).get("name")) or {}
        if name in data:
            value = data[name]
    return value

def check_agent(objs):
    configmaps = {}
    for _, o in objs:
        if o["kind"] == "ConfigMap":
            configmaps[o["metadata"]["name"]] = o.get("data") or {}
    for where, o in objs:
        pod = pod_spec(o)
        if o["kind"] != "DaemonSet" or not isinstance(pod, dict):
            continue
        for c in pod.get("containers") or []:
            if not os.path.basename((c.get("command") or [""])[0]) == AGENT:
                continue
            name = "%s/%s container %s" % (o["kind"], o["metadata"]["name"], c.get("name"))
            def err(msg):
                errors.append("%s: %s: %s" % (where, name, msg))
            mode = agent_setting(c, configmaps, "REPAIR_MODE", "repair")
            taint = agent_setting(c, configmaps, "REMOVE_TAINT", "false")
            interval = agent_setting(c, configmaps, "RECONCILE_INTERVAL", "60")
            if mode not in REPAIR_MODES:
                err("REPAIR_MODE %r is not one of %s" % (mode, ", ".join(REPAIR_MODES)))
                continue
            if taint not in ("true", "false"):
                err("REMOVE_TAINT %r is not true or false" % (taint,))
                continue
            if not (isinstance(interval, str) and interval.isdigit() and int(interval) > 0):
                err("RECONCILE_INTERVAL %r is not a positive number of seconds" % (interval,))
            if not tolerates(pod.get("tolerations"), *TAINT):
                err("does not tolerate the taint %s:%s it is to remove" % TAINT)
            caps = set(((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or [])
            host_pid = pod.get("hostPID") is True
            rules = granted(objs, pod.get("serviceAccountName") or "default",
                            o["metadata"].get("namespace"))
            need = [("", "pods", v) for v in ("get", "list", "watch")]
            if mode != "off":
                if not host_pid:
                    err("REPAIR_MODE=%s needs hostPID: true (a pod's /proc/PID/ns/net)" % mode)
                for cap in sorted(RECONCILE_CAPS - caps):
                    err("REPAIR_MODE=%s needs capability %s" % (mode, cap))
                need += [(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")]
            if mode == "label":
                need.append(("", "pods", "patch"))
            if mode == "delete":
                need.append(("", "pods", "delete"))
            if taint == "true":
                need += [("", "nodes", "get"), ("", "nodes", "patch")]
            for g, r, v in need:
                if not allows(rules, g, r, v):
                    err("REPAIR_MODE=%s, REMOVE_TAINT=%s: its service account may not %s %s%s"
                        % (mode, taint, v, r, " (%s)" % g if g else ""))
            if mode == "off" and taint == "false":
                # The install-only profile: nothing beyond what installing needs.
                if host_pid:
                    err("REPAIR_MODE=off does not use hostPID: remove it")
                if caps:
                    err("REPAIR_MODE=off uses no capability: remove %s" % ", ".join(sorted(caps)))
                extra = [(g, r, v) for rule in rules for g in rule.get("apiGroups") or []
                         for r in rule.get("resources") or [] for v in rule.get("verbs") or []
                         if (g, r, v) not in need]
                for g, r, v in extra:
                    err("REPAIR_MODE=off, REMOVE_TAINT=false: RBAC grants %s %s%s, which nothing uses"
                        % (v, r, " (%s)" % g if g else ""))

# ---- kustomization files --------------------------------------------------------------------

def find_kustomization(directory):
    for n in KUSTOMIZATION_NAMES:
        if os.path.isfile(os.path.join(directory, n)):
            return os.path.join(directory, n)
    return None

loaded = {}

def load_kustomization(directory, shown, known):
    """A kustomization file's content, its errors noted once however often it is read."""
    if directory not in loaded:
        loaded[directory] = read_kustomization(directory, shown, known)
    return loaded[directory]

def read_kustomization(directory, shown, known):
    path = find_kustomization(directory)
    if path is None:
        errors.append("%s: no kustomization.yaml" % shown)
        return None
    shown = os.path.join(shown, os.path.basename(path))
    try:
        with open(path) as f:
            k = yaml.load(f, Loader=Loader)
    except yaml.YAMLError as e:
        errors.append("%s: invalid YAML: %s" % (shown, e))
        return None
    if not isinstance(k, dict):
        errors.append("%s: not a mapping" % shown)
        return None
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        errors.append("%s: needs apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization" % shown)
    for key in sorted(set(k) - known):
        errors.append("%s: unexpected key %r" % (shown, key))
    res = k.get("resources") or []
    if len(res) != len(set(res)):
        errors.append("%s: a resource is listed twice" % shown)
    return k

BASE_KEYS = {"apiVersion", "kind", "metadata", "resources", "images", "labels", "commonLabels",
             "commonAnnotations", "namespace", "namePrefix", "nameSuffix", "patches",
             "configMapGenerator", "secretGenerator", "generatorOptions", "components",
             "replicas", "buildMetadata"}

def check_base_kustomization(directory, files):
    """The base lists exactly its manifest files (subdirectories, overlays/ among them, are
    not part of it)."""
    k = load_kustomization(directory, ".", BASE_KEYS)
    if k is None:
        return
    listed = set(k.get("resources") or [])
    present = {os.path.basename(p) for p in files}
    for r in sorted(listed - present):
        errors.append("kustomization.yaml: lists %r, which is not a manifest here" % r)
    for r in sorted(present - listed):
        errors.append("kustomization.yaml: does not list %r (kubectl apply -k would skip it)" % r)

# ---- the overlay build (a kustomize subset) --------------------------------------------------

BUILD_KEYS = {"apiVersion", "kind", "metadata", "resources", "patches", "images"}
TARGET_KEYS = {"group", "version", "kind", "name", "namespace"}

def build(directory, root, stack=()):
    """The objects kustomize would emit for directory, as (where, object); errors noted."""
    import jsonpatch, jsonpointer
    directory = os.path.realpath(directory)
    shown = os.path.relpath(directory, root)
    if directory in stack:
        errors.append("%s: resources form a cycle" % shown)
        return []
    k = load_kustomization(directory, shown, BUILD_KEYS)
    if k is None:
        return []
    kshown = os.path.join(shown, os.path.basename(find_kustomization(directory)))
    objs = []
    for r in k.get("resources") or []:
        path = os.path.normpath(os.path.join(directory, r))
        if os.path.isdir(path):
            objs += build(path, root, stack + (directory,))
        elif os.path.isfile(path):
            objs += load_documents(path, os.path.relpath(path, root))
        else:
            errors.append("%s: resource %r does not exist" % (kshown, r))
    objs = [(w, o) for w, o in check_objects(objs)]
    for i, p in enumerate(k.get("patches") or []):
        where = "%s: patches[%d]" % (kshown, i)
        if not isinstance(p, dict) or set(p) - {"target", "patch", "path"} or \
                ("patch" in p) == ("path" in p) or not isinstance(p.get("target"), dict):
            errors.append("%s: needs a target and one of patch, path (options are not supported)"
                          % where)
            continue
        target = p["target"]
        if set(target) - TARGET_KEYS:
            errors.append("%s: target selects by %s; this build knows only %s"
                          % (where, ", ".join(sorted(set(target) - TARGET_KEYS)),
                             ", ".join(sorted(TARGET_KEYS))))
            continue
        text = p.get("patch")
        if "path" in p:
            try:
                with open(os.path.join(directory, p["path"])) as f:
                    text = f.read()
            except OSError as e:
                errors.append("%s: %s" % (where, e))
                continue
        try:
            ops = yaml.load(text, Loader=Loader)
        except yaml.YAMLError as e:
            errors.append("%s: invalid YAML: %s" % (where, e))
            continue
        if not (isinstance(ops, list) and all(isinstance(op, dict) and "op" in op for op in ops)):
            errors.append("%s: not a JSON 6902 patch (a list of operations); strategic-merge "
                          "patches are not supported by this build" % where)
            continue
        matched = 0
        for j, (w, o) in enumerate(objs):
            group, _, version = o["apiVersion"].rpartition("/")
            have = {"group": group, "version": version, "kind": o["kind"],
                    "name": o["metadata"]["name"], "namespace": o["metadata"].get("namespace") or ""}
            if not all(re.fullmatch(str(v), have[key]) for key, v in target.items()):
                continue
            matched += 1
            try:
                objs[j] = (w + ", patched by " + where.split(": ")[0], jsonpatch.apply_patch(o, ops))
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                errors.append("%s: on %s/%s: %s" % (where, o["kind"], o["metadata"]["name"], e))
        if not matched:
            errors.append("%s: target %s matches no object" % (where, target))
    for i, img in enumerate(k.get("images") or []):
        where = "%s: images[%d]" % (kshown, i)
        if not isinstance(img, dict) or not img.get("name") or \
                set(img) - {"name", "newName", "newTag", "digest"}:
            errors.append("%s: needs name and any of newName, newTag, digest" % where)
            continue
        for _, o in objs:
            pod = pod_spec(o)
            for c in containers(pod) if isinstance(pod, dict) else []:
                image = c.get("image") or ""
                ref = re.match(r"^(.*?)(@sha256:[0-9a-f]+)?$", image).group(1)
                base, tag = (ref.rsplit(":", 1) + [""])[:2] if ":" in ref.rsplit("/", 1)[-1] else (ref, "")
                if base != img["name"]:
                    continue
                base = img.get("newName", base)
                if "digest" in img:
                    c["image"] = "%s@%s" % (base, img["digest"])
                else:
                    tag = img.get("newTag", tag)
                    c["image"] = base + (":" + tag if tag else "")
    return objs

def overlay_files(directory, k):
    """Every YAML file of an overlay directory must be used by its kustomization."""
    used = {os.path.normpath(os.path.join(directory, r)) for r in k.get("resources") or []}
    used |= {os.path.normpath(os.path.join(directory, p["path"]))
             for p in k.get("patches") or [] if isinstance(p, dict) and "path" in p}
    for n in sorted(os.listdir(directory)):
        path = os.path.join(directory, n)
        if n not in KUSTOMIZATION_NAMES and n.endswith((".yaml", ".yml")) and path not in used:
            errors.append("%s: not used by its kustomization"
                          % os.path.relpath(path, os.path.dirname(os.path.dirname(directory))))

def main():
    if sys.argv[1] == "check":
        root, kdir, files = sys.argv[2], sys.argv[3], sys.argv[4:]
        docs = []
        for path in files:
            docs += load_documents(path, os.path.relpath(path, root))
        objs = check_objects(docs)
        check_references(objs)
        check_agent(objs)
        if kdir != "-":
            check_base_kustomization(kdir, files)
    elif sys.argv[1] == "build":
        overlay, out = os.path.realpath(sys.argv[2]), sys.argv[3]
        root = os.path.dirname(os.path.dirname(overlay))  # the base: DIR/overlays/NAME
        k = load_kustomization(os.path.realpath(overlay), os.path.relpath(overlay, root), BUILD_KEYS)
        if k is not None:
            overlay_files(overlay, k)
        objs = build(overlay, root) if k is not None else []
        for i, (where, o) in enumerate(objs):
            name = "%02d-%s-%s.yaml" % (i + 1, o["kind"].lower(), o["metadata"]["name"])
            with open(os.path.join(out, name), "w") as f:
                f.write("%s%s, overlay %s\n" % (FROM, where, os.path.relpath(overlay, root)))
                yaml.safe_dump(o, f, sort_keys=False)
        objs = []
    for e in errors:
        print("ERROR " + e, file=sys.stderr)
    if errors:
        sys.exit(1)
    if sys.argv[1] == "check":
        print(len(objs))

main()
PY

failed=0
total_objects=0
total_sets=0

# validate LABEL ROOT KUSTOMIZATION_DIR|- FILE...: the checks above, then the schema, strict
# (run even when the first part failed, to report everything at once). Any line other than
# "INFO ... passed" is a failure: a WARN means that no schema was found for the
# kind/apiVersion, i.e. the object was not validated at all.
validate() {
  local label=$1 root=$2 kdir=$3 objects rc=0 out passed other structure_failed=0
  shift 3
  echo "validate-manifests: $label"
  objects=$("$venv/bin/python" "$tmp/check.py" check "$root" "$kdir" "$@") || {
    structure_failed=1
    objects=
  }
  out=$("$kv" --strict -k "$K8S_VERSION" "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | sed "s#$root/##g"
  passed=$(printf '%s\n' "$out" | grep -c '^INFO .* passed for resource ' || true)
  other=$(printf '%s\n' "$out" | grep -vc '^INFO .* passed for resource ' || true)
  if ((structure_failed)); then
    echo "validate-manifests: $label: FAILED: see the ERROR lines above" >&2
    failed=1
  elif ((rc != 0 || other != 0 || passed != objects)); then
    echo "validate-manifests: $label: FAILED: $passed of $objects objects passed the schema (exit $rc)" >&2
    failed=1
  else
    total_objects=$((total_objects + objects))
    total_sets=$((total_sets + 1))
  fi
}

# The base: the files of DIR itself (not its subdirectories).
manifests=()
while IFS= read -r f; do manifests+=("$f"); done < <(
  find "$dir" -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) \
    ! -name kustomization.yaml ! -name kustomization.yml ! -name Kustomization | LC_ALL=C sort)
if ((${#manifests[@]} == 0)); then
  echo "validate-manifests: no manifests in $dir" >&2
  exit 1
fi
validate "base ${dir##*/}/ (${#manifests[@]} files)" "$dir" "$dir" "${manifests[@]}"

# Each overlay, built.
for overlay in "$dir"/overlays/*; do
  [ -e "$overlay" ] || continue
  name=overlays/${overlay##*/}
  if [ ! -d "$overlay" ]; then
    case $overlay in # a README may sit there; a manifest may not
      *.yaml | *.yml)
        echo "ERROR $name: a manifest outside any overlay (overlays/NAME/kustomization.yaml)" >&2
        failed=1 ;;
    esac
    continue
  fi
  out=$tmp/$name
  mkdir -p "$out"
  if ! "$venv/bin/python" "$tmp/check.py" build "$overlay" "$out"; then
    echo "validate-manifests: $name: FAILED: it does not build" >&2
    failed=1
    continue
  fi
  built=()
  while IFS= read -r f; do built+=("$f"); done < <(find "$out" -type f -name '*.yaml' | LC_ALL=C sort)
  if ((${#built[@]} == 0)); then
    echo "ERROR $name: builds no object" >&2
    failed=1
    continue
  fi
  validate "$name/, built (${#built[@]} objects)" "$out" - "${built[@]}"
done

if ((failed)); then
  exit 1
fi
echo "validate-manifests: OK: $total_objects objects in $total_sets sets (the base and each" \
  "overlay, built) valid against Kubernetes $K8S_VERSION (kubernetes-validate $KV_VERSION" \
  "--strict), in $((SECONDS - start)) s"
