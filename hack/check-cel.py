#!/usr/bin/env python3
"""Evaluate the CRD's CEL rules (x-kubernetes-validations) with a real CEL implementation.

    python3 hack/check-cel.py               every rule against every test case
    python3 hack/check-cel.py --self-test   mutated rules must be caught by the cases

The test control plane (kube-apiserver 1.20) drops x-kubernetes-validations unevaluated, so this
is where the rules are checked. The CEL implementation is PyPI cel-python (import name celpy),
installed with pip on first use.

Every rule of every version's openAPIV3Schema is found by walking the schema (properties, items,
additionalProperties), with the path of the value it applies to. Each test object gets the
schema's defaults applied the way the API server applies them before validation (absent fields with
a default are set, recursively; absent fields without one stay absent, so `has()` is false for
them), and each rule is evaluated with `self` bound to every value at its path, as the API server
does (a rule under an absent optional field is not evaluated).

- Valid objects (every IngestionKeyRequest in examples/ and the inline VALID table) must pass
  every rule.
- Each INVALID case names the message of the one rule it must break, and must break exactly that
  rule.
- Every rule must be evaluated by at least one valid object and broken by at least one invalid
  case, or the check fails ("rule has no test cases").

--self-test mutates each rule (`== 1` to `>= 1`, `&&` to `||`, `!= ''` to `== ''`, and the whole
rule negated), and asserts that for each mutant some case gives the wrong answer: the cases are
strong enough to notice a broken rule.

Prints one line per rule and case (or mutant) and a final `N passed, M failed` line; exits 1 on any
failure.
"""

import argparse
import copy
import re
import sys
from pathlib import Path

import yaml
from script_support import pip_import, report

ROOT = Path(__file__).resolve().parent.parent
CRD_FILE = ROOT / "crds" / "ingestionkeyrequests.keysync.dev.yaml"
EXAMPLES = ROOT / "examples"

# ---------------------------------------------------------------------------------------------
# Test cases. A spec is wrapped into a whole object (apiVersion, kind, metadata, spec) so that
# rules anywhere in the schema, including at its root, see what the API server would show them.

API_KEY = {"name": "ibmcloud-api-key"}
GUID = "8d7af921-b136-4078-9666-081bd8470d94"
CRN = f"crn:v1:bluemix:public:logdnaat:us-south:a/4329073d16d2f3663f74bfa955259139:{GUID}::"

# Valid specs (besides the examples): each must pass every rule.
VALID = [
    ("by guid", {"instance": {"guid": GUID}, "apiKeySecretRef": API_KEY}),
    ("by crn", {"instance": {"crn": CRN}, "apiKeySecretRef": API_KEY}),
    (
        "by name, narrowed by region, resource group and service",
        {
            "instance": {"name": "shared-name", "region": "eu-gb", "resourceGroupId": "rg1", "serviceName": "logdna"},
            "apiKeySecretRef": API_KEY,
        },
    ),
    ("by guid, name an empty string (empty counts as unset)", {"instance": {"guid": GUID, "name": ""}, "apiKeySecretRef": API_KEY}),
    ("by crn, name and guid empty strings", {"instance": {"crn": CRN, "name": "", "guid": ""}, "apiKeySecretRef": API_KEY}),
    (
        "minimal: by name, everything else defaulted",
        {"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": API_KEY},
    ),
    ("refreshInterval at its minimum, 1m", {"instance": {"guid": GUID}, "apiKeySecretRef": API_KEY, "refreshInterval": "1m"}),
    ("refreshInterval 90s", {"instance": {"guid": GUID}, "apiKeySecretRef": API_KEY, "refreshInterval": "90s"}),
    ("refreshInterval 1h30m", {"instance": {"guid": GUID}, "apiKeySecretRef": API_KEY, "refreshInterval": "1h30m"}),
]

ONE_OF = "set exactly one of name, guid, crn"
MIN_REFRESH = "refreshInterval must be a duration of at least 1m, such as 15m or 1h"

# Invalid specs: (description, spec, message of the one rule it must break).
INVALID = [
    ("name and guid both set", {"instance": {"name": "a", "guid": GUID}, "apiKeySecretRef": API_KEY}, ONE_OF),
    ("name and crn both set", {"instance": {"name": "a", "crn": CRN}, "apiKeySecretRef": API_KEY}, ONE_OF),
    ("guid and crn both set", {"instance": {"guid": GUID, "crn": CRN}, "apiKeySecretRef": API_KEY}, ONE_OF),
    ("name, guid and crn all set", {"instance": {"name": "a", "guid": GUID, "crn": CRN}, "apiKeySecretRef": API_KEY}, ONE_OF),
    ("none set (empty instance)", {"instance": {}, "apiKeySecretRef": API_KEY}, ONE_OF),
    (
        "none set, only the name-lookup narrowing fields",
        {"instance": {"region": "us-south", "serviceName": "logs", "resourceGroupId": "rg1"}, "apiKeySecretRef": API_KEY},
        ONE_OF,
    ),
    ("all empty strings", {"instance": {"name": "", "guid": "", "crn": ""}, "apiKeySecretRef": API_KEY}, ONE_OF),
    ("name empty, guid empty, crn absent", {"instance": {"name": "", "guid": ""}, "apiKeySecretRef": API_KEY}, ONE_OF),
    ("name and guid set, crn empty", {"instance": {"name": "a", "guid": GUID, "crn": ""}, "apiKeySecretRef": API_KEY}, ONE_OF),
    ("refreshInterval 30s", {"instance": {"guid": GUID}, "apiKeySecretRef": API_KEY, "refreshInterval": "30s"}, MIN_REFRESH),
    ("refreshInterval 59s", {"instance": {"guid": GUID}, "apiKeySecretRef": API_KEY, "refreshInterval": "59s"}, MIN_REFRESH),
]

# ---------------------------------------------------------------------------------------------


def celpy_module():
    return pip_import("celpy", "cel-python", "hack/check-cel.py")


def find_rules(schema, path=()):
    """Every x-kubernetes-validations rule under `schema`: (path, rule dict). A path is a tuple of
    property names, "[*]" (list items) and "{*}" (additionalProperties values)."""
    found = [(path, rule) for rule in schema.get("x-kubernetes-validations") or []]
    for name, prop in (schema.get("properties") or {}).items():
        found += find_rules(prop, path + (name,))
    if isinstance(schema.get("items"), dict):
        found += find_rules(schema["items"], path + ("[*]",))
    if isinstance(schema.get("additionalProperties"), dict):
        found += find_rules(schema["additionalProperties"], path + ("{*}",))
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            found += find_rules(sub, path)
    return found


def show_path(path):
    text = ""
    for part in path:
        text += part if part in ("[*]", "{*}") else ("." + part if text else part)
    return text or "(root)"


def rule_id(rule):
    return rule.get("message") or rule.get("messageExpression") or rule["rule"]


def apply_defaults(value, schema):
    """Structural defaulting as the API server does it: a null of a non-nullable field is dropped,
    then an absent field with a default gets a copy of it; then each field, defaulted or not, is
    defaulted in turn. Absent fields without a default stay absent."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, prop in props.items():
            if name in value and value[name] is None and not prop.get("nullable") and "default" in prop:
                del value[name]
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
        for name, item in value.items():
            if name in props:
                apply_defaults(item, props[name])
            elif isinstance(schema.get("additionalProperties"), dict):
                apply_defaults(item, schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])
    return value


CEL_KEYWORDS = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function",
    "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while",
}  # fmt: skip


def escape_name(name):
    """Property names as Kubernetes exposes them to CEL (escaping of non-identifier names)."""
    if name in CEL_KEYWORDS:
        return f"__{name}__"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and "__" not in name:
        return name
    out = name.replace("__", "__underscores__")
    for char, word in ((".", "dot"), ("-", "dash"), ("/", "slash")):
        out = out.replace(char, f"__{word}__")
    return out


def to_cel_json(value, schema):
    """The object as CEL sees it: property names of structural objects escaped (map keys of
    additionalProperties are not)."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        if props:
            return {escape_name(k): to_cel_json(v, props.get(k, {})) for k, v in value.items()}
        return {k: to_cel_json(v, extra) for k, v in value.items()}
    if isinstance(value, list):
        return [to_cel_json(v, schema.get("items") or {}) for v in value]
    return value


def values_at(obj, path):
    """The values at `path` in `obj` (none when an optional field on the way is absent)."""
    if not path:
        return [obj]
    head, rest = path[0], path[1:]
    if head == "[*]":
        return [v for item in obj for v in values_at(item, rest)] if isinstance(obj, list) else []
    if head == "{*}":
        return [v for item in obj.values() for v in values_at(item, rest)] if isinstance(obj, dict) else []
    if isinstance(obj, dict) and obj.get(head) is not None:
        return values_at(obj[head], rest)
    return []


def schema_at(schema, path):
    for part in path:
        if part == "[*]":
            schema = schema.get("items") or {}
        elif part == "{*}":
            schema = schema.get("additionalProperties") or {}
        else:
            schema = (schema.get("properties") or {}).get(part) or {}
    return schema


class Checker:
    def __init__(self, celpy, crd):
        self.celpy = celpy
        self.env = celpy.Environment()
        self.versions = {}  # version name -> (schema, [(path, rule)])
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            self.versions[version["name"]] = (schema, find_rules(schema))
        # has() on a map, as Kubernetes uses it on objects: true for a present field (even an empty
        # string), false for an absent one, never an error.
        probe = self.compile("has(self.present) && !has(self.absent) && self.present == ''")
        if self.evaluate(probe, {"present": ""}, {}) is not True:
            raise SystemExit("celpy: has() on a map does not behave as in Kubernetes")
        self.group = crd["spec"]["group"]
        self.kind = crd["spec"]["names"]["kind"]

    def compile(self, text):
        return self.env.program(self.env.compile(text))

    def evaluate(self, program, value, schema):
        """True when the rule holds; an evaluation error counts as a violation (as in Kubernetes),
        returned as its message."""
        activation = {"self": self.celpy.json_to_cel(to_cel_json(value, schema))}
        try:
            result = program.evaluate(activation)
        except Exception as error:  # celpy raises CELEvalError, or returns it
            return f"error: {error}"
        if isinstance(result, self.celpy.CELEvalError):
            return f"error: {result}"
        if not isinstance(result, self.celpy.celtypes.BoolType):
            return f"error: rule returned {type(result).__name__}, not bool"
        return bool(result)

    def broken_rules(self, obj, version, programs):
        """For one object: {rule id: why} of the rules it breaks, and the ids of the rules that
        were evaluated at all."""
        schema, rules = self.versions[version]
        obj = apply_defaults(copy.deepcopy(obj), schema)
        broken, evaluated = {}, set()
        for (path, rule), program in zip(rules, programs[version]):
            if "oldSelf" in rule["rule"]:
                continue  # transition rule: not evaluated on create
            sub_schema = schema_at(schema, path)
            for value in values_at(obj, path):
                evaluated.add(rule_id(rule))
                result = self.evaluate(program, value, sub_schema)
                if result is not True:
                    broken[rule_id(rule)] = "false" if result is False else result
        return broken, evaluated

    def cases(self):
        """(name, object, version, expected broken rule id or None)."""
        out = []
        for path in sorted(EXAMPLES.glob("*.y*ml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not isinstance(doc, dict) or doc.get("kind") != self.kind:
                    continue
                group, _, version = doc.get("apiVersion", "").partition("/")
                if group != self.group or version not in self.versions:
                    raise SystemExit(f"{path}: unknown apiVersion {doc.get('apiVersion')}")
                name = f"examples/{path.name} ({doc['metadata']['name']})"
                out.append((name, doc, version, None))
        if not out:
            raise SystemExit(f"no {self.kind} found in examples/")
        for version in self.versions:
            for name, spec in VALID:
                out.append((name, self.wrap(spec, version), version, None))
            for name, spec, message in INVALID:
                out.append((name, self.wrap(spec, version), version, message))
        return out

    def wrap(self, spec, version):
        return {
            "apiVersion": f"{self.group}/{version}",
            "kind": self.kind,
            "metadata": {"name": "test", "namespace": "default"},
            "spec": copy.deepcopy(spec),
        }

    def run(self, programs, out=print):
        """Evaluates every case; returns (passed, failures)."""
        passed, failures = 0, []
        cases = self.cases()
        evaluated_by_valid, broken_by_invalid = {}, {}
        for name, obj, version, expected in cases:
            broken, evaluated = self.broken_rules(obj, version, programs)
            for rid in evaluated:
                evaluated_by_valid.setdefault((version, rid), 0)
                broken_by_invalid.setdefault((version, rid), 0)
            if expected is None:
                ok = not broken
                for rid in evaluated:
                    evaluated_by_valid[(version, rid)] += 1
                detail = "passes every rule" if ok else f"breaks {broken}"
                label = "valid"
            else:
                ok = set(broken) == {expected}
                if expected in broken:
                    broken_by_invalid[(version, expected)] += 1
                detail = f"breaks {expected!r}" if ok else f"expected to break only {expected!r}, breaks {broken or 'nothing'}"
                label = "invalid"
            out(f"{'ok  ' if ok else 'FAIL'} {version} {label}: {name}: {detail}")
            if ok:
                passed += 1
            else:
                failures.append(f"{version} {name}: {detail}")
        known = {rule_id(r) for _, rules in self.versions.values() for _, r in rules}
        for _, spec, message in INVALID:
            if message not in known:
                failures.append(f"invalid case names no rule of the CRD: {message!r}")
                out(f"FAIL invalid cases name {message!r}, which is no rule of the CRD")
        for version, (_, rules) in self.versions.items():
            for path, rule in rules:
                rid = rule_id(rule)
                valid_n = evaluated_by_valid.get((version, rid), 0)
                invalid_n = broken_by_invalid.get((version, rid), 0)
                ok = valid_n > 0 and invalid_n > 0
                out(
                    f"{'ok  ' if ok else 'FAIL'} {version} rule at {show_path(path)} ({rid!r}): "
                    f"held for {valid_n} valid object(s), broken by {invalid_n} invalid case(s)"
                    + ("" if ok else ": rule has no test cases (add them to hack/check-cel.py)")
                )
                if ok:
                    passed += 1
                else:
                    failures.append(f"{version} rule at {show_path(path)} {rid!r} has no test cases")
        return passed, failures


MUTATIONS = [("== 1", ">= 1"), ("&&", "||"), ("!= ''", "== ''")]


def mutants(text):
    """Variants of a rule: each mutation applied at one occurrence at a time, and the negation."""
    out = []
    for old, new in MUTATIONS:
        start = 0
        while (at := text.find(old, start)) >= 0:
            out.append((f"{old!r} -> {new!r} at {at}", text[:at] + new + text[at + len(old) :]))
            start = at + len(old)
    out.append(("negated", f"!({text})"))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self-test", action="store_true", help="check that mutated rules are caught")
    parser.add_argument("--crd", default=str(CRD_FILE), help="the CRD file")
    args = parser.parse_args()

    celpy = celpy_module()
    crd = yaml.safe_load(Path(args.crd).read_text())
    checker = Checker(celpy, crd)
    programs = {v: [checker.compile(r["rule"]) for _, r in rules] for v, (_, rules) in checker.versions.items()}
    count = sum(len(rules) for _, rules in checker.versions.values())
    print(f"{count} CEL rule(s) in {Path(args.crd).name} (versions {', '.join(checker.versions)})")

    if not args.self_test:
        passed, failures = checker.run(programs)
    else:
        passed, failures = 0, []
        for version, (_, rules) in checker.versions.items():
            for index, (path, rule) in enumerate(rules):
                for what, text in mutants(rule["rule"]):
                    mutated = {v: list(p) for v, p in programs.items()}
                    try:
                        mutated[version][index] = checker.compile(text)
                    except Exception as error:
                        print(f"skip {version} {show_path(path)} mutant {what}: does not compile ({error})")
                        continue
                    _, caught = checker.run(mutated, out=lambda _line: None)
                    where = f"{version} rule at {show_path(path)} ({rule_id(rule)!r}), mutant {what}"
                    if caught:
                        passed += 1
                        print(f"ok   {where}: caught by {len(caught)} case(s), e.g. {caught[0]}")
                    else:
                        failures.append(where)
                        print(f"FAIL {where}: every case still gives the expected answer (cases too weak)")
        if passed == 0 and not failures:
            failures.append("no mutant was tried")

    return report(passed, failures)


if __name__ == "__main__":
    sys.exit(main())
