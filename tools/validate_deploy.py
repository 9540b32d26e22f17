#!/usr/bin/env python3
"""Validates deploy/ offline (run by `make test`):

- core kinds (Deployment, Service, PersistentVolumeClaim, Job, ConfigMap, ServiceAccount, Role, RoleBinding) with
  kubernetes-validate (strict: unknown fields are errors), Kubernetes 1.34;
- InferencePool, HTTPRoute and the endpoint picker's EndpointPickerConfig with the JSON schemas in deploy/schemas/,
  written from those projects' API types;
- that the objects agree: the pool selects the model-server pods and their port, its endpoint picker reference is
  the EPP Service, the route's backend is the pool, profiles name defined plugins, the EPP watches this pool, the
  probes hit radixserve's readiness and liveness routes, and every radixserve flag in the Deployment exists.

Usage: python tools/validate_deploy.py [path/to/radixserve-binary]
"""
import glob
import json
import os
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
K8S = "1.34.0"
CORE = {"Deployment", "Service", "PersistentVolumeClaim", "Job", "ConfigMap", "ServiceAccount", "Role", "RoleBinding"}
SCHEMAS = {"InferencePool": "inferencepool-v1.json", "HTTPRoute": "httproute-v1.json"}


def load(name):
    with open(os.path.join(DEPLOY, "schemas", name)) as f:
        return json.load(f)


def main():
    docs = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "*.yaml"))):
        with open(path) as f:
            docs += [(os.path.basename(path), d) for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for file, d in docs:
        kind = d["kind"]
        by_kind.setdefault(kind, []).append(d)
        if kind in CORE:
            kubernetes_validate.validate(d, K8S, strict=True)
        elif kind in SCHEMAS:
            jsonschema.validate(d, load(SCHEMAS[kind]))
        else:
            raise SystemExit(f"{file}: no schema for kind {kind}")
        print(f"ok {file}: {kind} {d['metadata']['name']}")

    def one(kind, name):
        found = [d for d in by_kind.get(kind, []) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    pool = one("InferencePool", "radixserve")
    server = one("Deployment", "radixserve")
    pod = server["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in pool["spec"]["selector"]["matchLabels"].items()), "pool selects the pods"
    c = pod["spec"]["containers"][0]
    assert pool["spec"]["targetPorts"][0]["number"] in [p["containerPort"] for p in c["ports"]], "pool port"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health" and c["livenessProbe"]["httpGet"]["path"] == "/live"
    ref = pool["spec"]["endpointPickerRef"]
    epp_svc = one("Service", ref["name"])
    assert ref["portNumber"] in [p["port"] for p in epp_svc["spec"]["ports"]], "endpoint picker port"
    epp = one("Deployment", ref["name"])
    args = epp["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--pool-name") + 1] == pool["metadata"]["name"], "the EPP watches this pool"
    cfg = yaml.safe_load(one("ConfigMap", "radixserve-epp-config")["data"]["epp.yaml"])
    jsonschema.validate(cfg, load("endpointpickerconfig-v1alpha1.json"))
    names = {p.get("name", p["type"]) for p in cfg["plugins"]}
    for prof in cfg["schedulingProfiles"]:
        for p in prof["plugins"]:
            assert p["pluginRef"] in names, f"profile {prof['name']} names undefined plugin {p['pluginRef']}"
    route = one("HTTPRoute", "radixserve")
    backends = [b for r in route["spec"]["rules"] for b in r["backendRefs"]]
    assert any(b.get("kind") == "InferencePool" and b["name"] == pool["metadata"]["name"] for b in backends)
    grace = server["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    sargs = c["args"]
    assert grace > int(sargs[sargs.index("--shutdown-grace-s") + 1]), "the kubelet waits longer than the drain"
    if len(sys.argv) > 1:
        help_text = subprocess.run([sys.argv[1], "serve", "--help"], capture_output=True, text=True, check=True).stdout
        for a in sargs:
            if a.startswith("--"):
                assert a in help_text, f"radixserve serve has no flag {a}"
    print(f"deploy: {len(docs)} objects valid and consistent")


if __name__ == "__main__":
    main()
