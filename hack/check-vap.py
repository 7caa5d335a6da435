#!/usr/bin/env python3
"""Evaluate the chart's ValidatingAdmissionPolicy (admissionPolicy.enabled) with a real CEL
implementation (PyPI cel-python), as a 1.30+ API server would: the match condition, the variables,
then every validation, with `object`, `oldObject` and `request` bound.

    python3 hack/check-vap.py

The test control plane (1.20) has no admission policies, so this is where they are checked. Each
case is an update of a DaemonSet, Deployment or StatefulSet by a user: the policy must let the
operator change the pod-template annotation keysync.dev/credential-fingerprint (and the API
server's own bookkeeping) and deny it anything else; other users' updates are not its business.
Prints one line per case and `N passed, M failed`; exits 1 on any failure.
"""

import copy
import json
import sys
from pathlib import Path

import yaml
from script_support import pip_import, report

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "ingestion-key-operator"
OPERATOR = "system:serviceaccount:ingestion-key-operator:ingestion-key-operator"
FINGERPRINT = "keysync.dev/credential-fingerprint"


def policy():
    helm = pip_import("helm_python", "helm-python-sdk", "hack/check-vap.py")
    chart = helm.Chart.load(str(CHART))
    values = {"admissionPolicy": {"enabled": True}}
    rendered = chart.render(values, name="ingestion-key-operator", namespace="ingestion-key-operator", is_install=True)
    for path, text in rendered.items():
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc and doc.get("kind") == "ValidatingAdmissionPolicy":
                return doc
    raise SystemExit("hack/check-vap.py: no ValidatingAdmissionPolicy rendered")


def workload(kind, **extra):
    template = {
        "metadata": {"labels": {"app": "agent"}, "annotations": {"team": "obs"}},
        "spec": {"containers": [{"name": "agent", "image": "logdna-agent:3"}]},
    }
    spec = {"selector": {"matchLabels": {"app": "agent"}}, "template": template}
    if kind != "DaemonSet":
        spec["replicas"] = 2
    if kind == "StatefulSet":
        spec["serviceName"] = "agent"
    spec.update(extra)
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": "agent", "namespace": "ibm-observe", "generation": 3, "labels": {"app": "agent"}},
        "spec": spec,
    }


def changed(old, change):
    new = copy.deepcopy(old)
    change(new)
    new["metadata"]["generation"] = old["metadata"]["generation"] + 1  # the API server's own
    return new


def set_fingerprint(value):
    return lambda o: o["spec"]["template"]["metadata"]["annotations"].__setitem__(FINGERPRINT, value)


def cases():
    for kind in ["DaemonSet", "Deployment", "StatefulSet"]:
        old = workload(kind)
        with_fp = changed(old, set_fingerprint("sha256:aaaa"))
        yield f"{kind}: the operator sets the fingerprint", OPERATOR, old, with_fp, True
        yield f"{kind}: the operator changes the fingerprint", OPERATOR, with_fp, changed(with_fp, set_fingerprint("sha256:bbbb")), True
        bare = workload(kind)
        del bare["spec"]["template"]["metadata"]["annotations"]
        yield f"{kind}: the operator sets the first template annotation", OPERATOR, bare, changed(bare, lambda o: o["spec"]["template"]["metadata"].__setitem__("annotations", {FINGERPRINT: "sha256:aaaa"})), True
        denied = {
            "changes the image": lambda o: o["spec"]["template"]["spec"]["containers"][0].__setitem__("image", "evil:1"),
            "adds a template annotation": lambda o: o["spec"]["template"]["metadata"]["annotations"].__setitem__("other", "x"),
            "removes a template annotation": lambda o: o["spec"]["template"]["metadata"]["annotations"].pop("team"),
            "changes a template label": lambda o: o["spec"]["template"]["metadata"]["labels"].__setitem__("app", "x"),
            "changes the workload's labels": lambda o: o["metadata"]["labels"].__setitem__("app", "x"),
            "annotates the workload": lambda o: o["metadata"].__setitem__("annotations", {"a": "b"}),
            "changes the selector": lambda o: o["spec"]["selector"]["matchLabels"].__setitem__("tier", "x"),
            "adds a host path": lambda o: o["spec"]["template"]["spec"].__setitem__("volumes", [{"name": "h", "hostPath": {"path": "/"}}]),
            "sets an update strategy": lambda o: o["spec"].__setitem__("updateStrategy" if kind != "Deployment" else "strategy", {"type": "OnDelete" if kind != "Deployment" else "Recreate"}),
        }
        if kind != "DaemonSet":
            denied["scales it"] = lambda o: o["spec"].__setitem__("replicas", 50)
        for what, change in denied.items():
            def both(o, change=change):
                change(o)
                set_fingerprint("sha256:aaaa")(o)
            yield f"{kind}: the operator {what}", OPERATOR, old, changed(old, both), False
        yield f"{kind}: another user changes the image", "jane", old, changed(old, denied["changes the image"]), True


class Policy:
    def __init__(self, celpy, doc):
        self.celpy = celpy
        env = celpy.Environment()
        compile = lambda text: env.program(env.compile(text))
        spec = doc["spec"]
        self.matches = [compile(c["expression"]) for c in spec.get("matchConditions", [])]
        self.variables = [(v["name"], compile(v["expression"])) for v in spec.get("variables", [])]
        self.validations = [(v["message"], compile(v["expression"])) for v in spec["validations"]]

    def evaluate(self, program, activation):
        result = program.evaluate(activation)
        if isinstance(result, self.celpy.CELEvalError):
            raise result
        return result

    def admits(self, user, old, new):
        """True when the update is admitted; the messages of the broken validations otherwise."""
        cel = self.celpy.json_to_cel
        activation = {
            "object": cel(new),
            "oldObject": cel(old),
            "request": cel({"userInfo": {"username": user}, "operation": "UPDATE"}),
        }
        if not all(bool(self.evaluate(m, activation)) for m in self.matches):
            return True
        variables = {}
        for name, program in self.variables:
            activation["variables"] = self.celpy.celtypes.MapType(variables)
            variables[self.celpy.celtypes.StringType(name)] = self.evaluate(program, activation)
        activation["variables"] = self.celpy.celtypes.MapType(variables)
        broken = []
        for message, program in self.validations:
            try:
                ok = bool(self.evaluate(program, activation))
            except Exception as error:  # an evaluation error denies, as in Kubernetes
                ok, message = False, f"{message} (error: {error})"
            if not ok:
                broken.append(message)
        return True if not broken else broken


def main():
    celpy = pip_import("celpy", "cel-python", "hack/check-vap.py")
    checker = Policy(celpy, policy())
    passed, failures = 0, []
    for name, user, old, new, expected in cases():
        verdict = checker.admits(user, old, new)
        admitted = verdict is True
        if admitted == expected:
            passed += 1
            print(f"ok: {name}: {'admitted' if admitted else 'denied: ' + '; '.join(verdict)}")
        else:
            failures.append(f"{name}: expected {'admitted' if expected else 'denied'}, got {json.dumps(verdict)}")
    return report(passed, failures)


if __name__ == "__main__":
    sys.exit(main())
