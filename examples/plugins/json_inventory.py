#!/usr/bin/env python3
"""A Gleaner collector plugin: reports the entries of a JSON file as resources.

It speaks Gleaner's plugin protocol (docs/plugins.md): one JSON request line on stdin, one
JSON message per line on stdout, free-form logs on stderr, exit status 0 when the call worked.

Register it (the path must exist on the API host and on every worker):

    curl -s -X POST localhost:8080/v1/plugins -H 'content-type: application/json' \
      -d '{"id": "json-inventory", "version": "1.0.0",
           "command": "/path/to/examples/plugins/json_inventory.py"}'

The file is a JSON array of objects; each needs an "id", and may have "name" and "region".
An entry without an id is reported as an item error, and the collection goes on.
"""

import json
import sys

METADATA = {
    "type": "metadata",
    "name": "JSON inventory",
    "description": "Servers listed in a JSON file on the worker's disk",
    "kind": "collector",
    "provider": "demo",
    "resource_types": ["custom.server"],
    "options_schema": {
        "type": "object",
        "required": ["path"],
        "properties": {
            "path": {"type": "string", "description": "the JSON file to read"},
            "resource_type": {"type": "string", "default": "custom.server"},
        },
        "additionalProperties": False,
    },
}


def emit(message):
    sys.stdout.write(json.dumps(message) + "\n")


def log(text):
    print(text, file=sys.stderr)


def read_inventory(options):
    with open(options["path"], encoding="utf-8") as f:
        inventory = json.load(f)
    if not isinstance(inventory, list):
        raise ValueError(f"{options['path']} must hold a JSON array")
    return inventory


def collect(params):
    options = params["options"]
    resource_type = options.get("resource_type", "custom.server")
    inventory = read_inventory(options)
    stored = 0
    for index, entry in enumerate(inventory):
        if not isinstance(entry, dict) or "id" not in entry:
            emit({
                "type": "error",
                "message": f"entry {index} has no id",
                "resource_type": resource_type,
            })
            continue
        emit({
            "type": "resource",
            "resource_type": resource_type,
            "resource_key": str(entry["id"]),
            "name": entry.get("name"),
            "region": entry.get("region"),
            "data": entry,
        })
        stored += 1
    log(f"json-inventory: reported {stored} of {len(inventory)} entries")
    emit({"type": "done"})


def main():
    request = json.loads(sys.stdin.readline())
    method = request["method"]
    if method == "init":
        emit(METADATA)
    elif method == "verify":
        read_inventory(request["params"]["options"])
        emit({"type": "verified"})
    elif method == "collect":
        collect(request["params"])
    else:
        log(f"json-inventory: unknown method {method!r}")
        sys.exit(2)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a readable last line on stderr becomes the task's error
        log(f"json-inventory: {type(e).__name__}: {e}")
        sys.exit(1)
