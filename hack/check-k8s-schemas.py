#!/usr/bin/env python3
"""Validate the manifests against the API schemas of Kubernetes 1.27 to 1.33, in strict mode.

    python3 hack/check-k8s-schemas.py

The test control plane is kube-apiserver 1.20; users run 1.27 to 1.33. This validates, offline,
with the schemas that PyPI kubernetes-validate bundles (installed with pip on first use; for each
minor version the newest patch version it ships), in strict mode (unknown fields are errors):

- the CRD file crds/ingestionkeyrequests.keysync.dev.yaml;
- every manifest of `kubectl kustomize deploy/`;
- the Helm chart rendered by `python3 hack/helm.py render` with the default values and with
  CHART_VALUES below;
- the examples/ manifests of core Kubernetes kinds (the IngestionKeyRequest custom resources are
  checked by hack/check-cel.py and the CRD's schema, the simulator seed is not a manifest).

Kinds that the schemas do not know (a ServiceMonitor, say) are skipped with a note. Before that, a
canary (a Deployment with an unknown field) must be rejected by every version, so that strict mode
is known to be on. Prints one line per failure, a table (manifest x version) and a final
`N passed, M failed` line; exits 1 on any failure.
"""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import yaml
from script_support import pip_import, report

ROOT = Path(__file__).resolve().parent.parent
CHART = "charts/ingestion-key-operator"
CRD_FILE = "crds/ingestionkeyrequests.keysync.dev.yaml"
MINORS = ["1.27", "1.28", "1.29", "1.30", "1.31", "1.32", "1.33"]
CHART_VALUES = [
    ("default values", {}),
    ("watchNamespaces", {"watchNamespaces": ["ibm-observe"], "metrics": {"serviceMonitor": {"enabled": False}}}),
    ("networkPolicy", {"networkPolicy": {
        "enabled": True,
        "metrics": {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]},
        "apiServer": {"cidrs": ["10.0.0.1/32"]},
    }}),
]
# Files of examples/ that are not Kubernetes manifests.
NOT_MANIFESTS = {"seed.yaml"}


def kubernetes_validate():
    kv = pip_import("kubernetes_validate", "kubernetes-validate", "hack/check-k8s-schemas.py")
    importlib.import_module("kubernetes_validate.utils")
    return kv


def versions(kv):
    """For each minor version, the newest patch version kubernetes-validate ships."""
    shipped = sorted(set(kv.utils.all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))
    chosen = {}
    for minor in MINORS:
        matching = [v for v in shipped if kv.utils.major_minor(v) == minor]
        if not matching:
            raise SystemExit(
                f"kubernetes-validate {kv.version.__version__} ships no schemas for Kubernetes {minor} "
                f"(it has {', '.join(shipped)})"
            )
        chosen[minor] = matching[-1]
    return chosen


def run(args):
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


def documents(text, source):
    """(source, document) for each non-empty YAML document."""
    return [(source, doc) for doc in yaml.safe_load_all(text) if doc]


def manifests():
    docs = documents((ROOT / CRD_FILE).read_text(), CRD_FILE)
    docs += documents(run(["kubectl", "kustomize", "deploy/"]), "kustomize deploy/")
    for label, values in CHART_VALUES:
        rendered = run([sys.executable, "hack/helm.py", "render", CHART, "--values-json", json.dumps(values)])
        docs += documents(rendered, f"chart ({label})")
    for path in sorted((ROOT / "examples").glob("*.y*ml")):
        if path.name in NOT_MANIFESTS:
            continue
        for source, doc in documents(path.read_text(), f"examples/{path.name}"):
            if "/" in doc.get("apiVersion", "") and doc["apiVersion"].split("/")[0] == "keysync.dev":
                continue  # our own custom resources: hack/check-cel.py and the CRD schema
            docs.append((source, doc))
    return docs


CANARY = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "canary"},
    "spec": {
        "selector": {"matchLabels": {"app": "canary"}},
        "template": {
            "metadata": {"labels": {"app": "canary"}},
            "spec": {"containers": [{"name": "c", "image": "i", "unknownField": True}]},
        },
    },
}


def main():
    kv = kubernetes_validate()
    chosen = versions(kv)
    print(
        f"kubernetes-validate {kv.version.__version__}, strict mode, schemas of Kubernetes "
        + ", ".join(chosen.values())
    )
    passed, failures, skipped = 0, [], []

    canaries = 0
    for minor, version in chosen.items():
        try:
            kv.validate(CANARY, version, strict=True)
            failures.append(f"{version}: the canary with an unknown field passed: strict mode is not on")
        except kv.ValidationError:
            canaries += 1
    passed += canaries

    rows = []  # (source, kind/name, {minor: "ok" | "FAIL" | "skip"})
    for source, doc in manifests():
        name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        cells = {}
        for minor, version in chosen.items():
            try:
                kv.validate(doc, version, strict=True)
                cells[minor] = "ok"
                passed += 1
            except kv.ValidationError as e:
                where = ".".join(str(p) for p in e.path) or "(top)"
                cells[minor] = "FAIL"
                failures.append(f"{source} {name} on {version}: {where}: {e.message}")
                print(f"FAIL {source} {name} on {version}: {where}: {e.message}")
            except kv.SchemaNotFoundError:
                cells[minor] = "skip"
        if all(cell == "skip" for cell in cells.values()):
            skipped.append(f"{source} {name} ({doc.get('apiVersion')}): no schema in Kubernetes, not checked")
        elif "skip" in cells.values():
            missing = [m for m, cell in cells.items() if cell == "skip"]
            failures.append(f"{source} {name} ({doc.get('apiVersion')}): unknown to Kubernetes {', '.join(missing)}")
        rows.append((source, name, cells))

    width_source = max(len(r[0]) for r in rows)
    width_name = max(len(r[1]) for r in rows)
    print(f"{'manifest':<{width_source}}  {'kind/name':<{width_name}}  " + "  ".join(f"{m:<4}" for m in chosen))
    for source, name, cells in rows:
        print(f"{source:<{width_source}}  {name:<{width_name}}  " + "  ".join(f"{cells[m]:<4}" for m in chosen))
    for note in skipped:
        print(f"note: {note}")
    print(f"canary (a Deployment with an unknown field) rejected by {canaries} of {len(chosen)} version(s)")
    return report(passed, failures)


if __name__ == "__main__":
    sys.exit(main())
