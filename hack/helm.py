#!/usr/bin/env python3
"""Lint and render a Helm chart with the real Helm engine (PyPI helm-python-sdk), no helm binary.

    hack/helm.py lint   CHART [--values-json JSON]
    hack/helm.py render CHART [--values-json JSON] [--name NAME] [--namespace NS] [--crds]
    hack/helm.py crds   CHART
    hack/helm.py notes  CHART [--values-json JSON] [--name NAME] [--namespace NS]

`lint` prints the findings and fails on any error (or warning with --strict). `render` prints the
rendered manifests as one YAML stream, templates in path order, each after a `# Source:` line
(with --crds, the chart's CRDs first). `crds` prints the chart's CRD files exactly as stored.
Installs helm-python-sdk with pip when it cannot be imported.
"""

import argparse
import json
import sys

from script_support import pip_import


def helm():
    return pip_import("helm_python", "helm-python-sdk", "hack/helm.py")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["lint", "render", "crds", "notes", "install-only"])
    parser.add_argument("chart", nargs="?")
    parser.add_argument("--values-json", default="{}", help="values as a JSON object")
    parser.add_argument("--name", default="ingestion-key-operator", help="release name")
    parser.add_argument("--namespace", default="ingestion-key-operator", help="release namespace")
    parser.add_argument("--crds", action="store_true", help="render: print the chart's CRDs first")
    parser.add_argument("--strict", action="store_true", help="lint: fail on warnings too")
    args = parser.parse_args()

    h = helm()
    if args.command == "install-only":
        print(f"helm-python-sdk ready (Helm SDK {h.helm_sdk_version()})")
        return 0
    if not args.chart:
        parser.error("CHART is required")
    values = json.loads(args.values_json)

    if args.command == "lint":
        report = h.lint(args.chart, values, strict=args.strict, namespace=args.namespace)
        for message in report.get("messages") or []:
            severity = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}.get(message.get("severity"), "?")
            print(f"[{severity}] {message.get('path')}: {message.get('error')}")
        errors = list(report.get("errors") or [])
        errors += [m for m in report.get("messages") or [] if m.get("severity") == 3]
        print(f"{report.get('total_charts_linted', 0)} chart(s) linted, {len(errors)} error(s)")
        return 1 if errors else 0

    chart = h.Chart.load(args.chart)
    if args.command == "crds":
        for crd in chart.crds:
            sys.stdout.write(crd_text(crd))
        return 0

    out = []
    if args.crds:
        for crd in chart.crds:
            out.append(crd_text(crd))
    rendered = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    if args.command == "notes":
        sys.stdout.write(next((t for p, t in rendered.items() if p.endswith("/NOTES.txt")), ""))
        return 0
    for path in sorted(rendered):
        text = rendered[path].strip()
        if not path.endswith((".yaml", ".yml")) or not text or all(
            line.strip() in ("", "---") or line.lstrip().startswith("#") for line in text.splitlines()
        ):
            continue
        if not text.startswith("---"):
            text = "---\n" + text
        out.append(f"# Source: {path}\n{text}\n")
    sys.stdout.write("".join(out))
    return 0


def crd_text(crd):
    """A CRD entry of Chart.crds: a dict with the file's name and data (or the text itself)."""
    if isinstance(crd, str):
        return crd
    for key in ("data", "Data", "file", "content"):
        if key in crd:
            return crd[key]
    raise SystemExit(f"hack/helm.py: unexpected CRD entry {sorted(crd)}")


if __name__ == "__main__":
    sys.exit(main())
