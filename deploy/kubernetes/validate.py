#!/usr/bin/env python3
"""Validates Gleaner's Kubernetes manifests offline, as kubeconform -strict would.

    python3 deploy/kubernetes/validate.py [--kubernetes-version 1.30.0] [FILE ...]

Built-in kinds are checked against the Kubernetes JSON schemas that `kubernetes-validate`
(PyPI) ships, in strict mode (an unknown field is an error); KEDA's kinds against the schemas
pinned in schemas/ (from KEDA's CRDs). A document of a kind with no schema is an error, not a
warning. With no FILE, every *.yaml here. Exits 1 on any error.
"""

import argparse
import glob
import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
# Kinds whose schema is pinned here rather than built into Kubernetes.
PINNED = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh-scaledobject-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh-triggerauthentication-v1alpha1.json",
}
# kustomize's own file is not a Kubernetes object.
SKIP = {("kustomize.config.k8s.io/v1beta1", "Kustomization")}


def check(doc, version):
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in SKIP:
        return None
    if key in PINNED:
        with open(os.path.join(HERE, "schemas", PINNED[key])) as f:
            schema = json.load(f)
        errors = sorted(
            jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path)
        )
        if errors:
            return "; ".join(f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors)
        return None
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return f"no schema: {e}"
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kubernetes-version", default="1.30.0")
    p.add_argument("files", nargs="*")
    args = p.parse_args()
    files = args.files or sorted(
        f for f in glob.glob(os.path.join(HERE, "*.yaml"))
    )
    failed = 0
    checked = 0
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        for doc in docs:
            name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            error = check(doc, args.kubernetes_version)
            if error:
                print(f"INVALID {name}: {error}")
                failed += 1
            else:
                checked += 1
    print(f"{checked} valid, {failed} invalid (Kubernetes {args.kubernetes_version})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
