#!/usr/bin/env python3
"""Writes deploy/ (the kustomize base) from the Helm chart's defaults: `make deploy`.

Renders charts/ingestion-key-operator for a release and namespace named ingestion-key-operator
with the real Helm engine (hack/helm.py), drops Helm's own labels, and writes one file per
template into deploy/. tests/packaging/deploy.rs checks that deploy/ and the chart stay equivalent.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = (
    "# Generated from the Helm chart's defaults (charts/ingestion-key-operator, release and namespace\n"
    "# ingestion-key-operator) without Helm's own labels by `make deploy`;\n"
    "# tests/packaging/deploy.rs checks they stay equivalent.\n"
)
HELM_ONLY = ("helm.sh/chart:", "app.kubernetes.io/managed-by: Helm")


def main():
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "hack/helm.py"), "render", str(ROOT / "charts/ingestion-key-operator"),
         "--name", "ingestion-key-operator", "--namespace", "ingestion-key-operator"],
        check=True, capture_output=True, text=True,
    ).stdout
    files = {}
    current = None
    for line in rendered.splitlines():
        if line.startswith("# Source: "):
            current = Path(line.split("# Source: ", 1)[1]).name
            files.setdefault(current, [])
            continue
        if current is None or any(mark in line for mark in HELM_ONLY):
            continue
        files[current].append(line)
    for name, lines in files.items():
        body = "\n".join(lines).strip("\n")
        body = body.removeprefix("---\n")
        (ROOT / "deploy" / name).write_text(HEADER + body + "\n")
        print(f"deploy/{name}")


main()
