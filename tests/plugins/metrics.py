#!/usr/bin/env python3
"""A private metric data source for the tests: for each target it reports `load` at the last
three whole minutes up to the task's `end` that are after the target's `since`, valued
`minute % 7 + 0.5` (the minute counted from the Unix epoch); with the option `undeclared`,
then one sample of a metric it never declared."""
import json
import sys
from datetime import datetime, timezone

request = json.loads(sys.stdin.readline())
method = request["method"]
if method == "init":
    print(json.dumps({
        "type": "metadata", "name": "Test metrics", "kind": "metric_data_source",
        "provider": "demo",
        "metrics": [{"name": "load", "resource_type": "compute.instance", "unit": "Count"}],
    }))
    sys.exit(0)
if method == "verify":
    print(json.dumps({"type": "verified"}))
    sys.exit(0)


def epoch(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


asked = request["params"]["metrics"]
end = int(epoch(asked["end"])) // 60
for target in asked["targets"]:
    since = epoch(target["since"]) / 60
    for minute in range(end - 2, end + 1):
        if minute <= since:
            continue
        at = datetime.fromtimestamp(minute * 60, tz=timezone.utc).isoformat()
        print(json.dumps({"type": "sample", "resource_id": target["resource_id"],
                          "metric": "load", "time": at, "value": minute % 7 + 0.5}))
if request["params"]["options"].get("undeclared") and asked["targets"]:
    print(json.dumps({"type": "sample", "resource_id": asked["targets"][0]["resource_id"],
                      "metric": "undeclared", "time": asked["end"], "value": 1}))
print(json.dumps({"type": "done"}))
