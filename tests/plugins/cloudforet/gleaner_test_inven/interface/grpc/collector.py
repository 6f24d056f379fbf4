"""A Cloudforet inventory collector for Gleaner's tests.

Options (the collector's `options`):
- `count` (default 3): CloudService resources, `server-0` … `server-{count-1}`. Every fifth
  one (index 4, 9, …) has no `reference.resource_id`, so its key comes from match rule 2.
- `failures` (default 1): FAILURE items (`inventory.ErrorResource`) after the resources.
- `hang`: sleep this many seconds before the first item.
- `die_after` with `marker` (a file path): on the first run (the marker file absent), create
  the marker, send `die_after` resources, then kill this process with SIGKILL.
- `error_code`: fail `collect` with this spaceone error code (e.g. ERROR_AUTHENTICATE_FAILURE).
- `tasks` (default 0): `Job.get_tasks` answers this many sub-tasks; each collects the
  resources whose index modulo `tasks` is its `part`.
- `fail_part`: the sub-task of this `part` fails with `ERROR_TEST_PART` after its resources.
Like real plugins, it logs every request, `secret_data` included.
"""

import logging
import os
import signal
import time

from spaceone.api.inventory.plugin import collector_pb2, collector_pb2_grpc
from spaceone.core.error import ERROR_BASE, ERROR_REQUIRED_PARAMETER
from spaceone.core.pygrpc import BaseAPI

_LOGGER = logging.getLogger("spaceone")

RULES = {"1": ["reference.resource_id", "provider", "cloud_service_type", "cloud_service_group", "account"],
         "2": ["name", "account", "provider", "cloud_service_group", "cloud_service_type"]}


class Failed(ERROR_BASE):
    _status_code = "UNAUTHENTICATED"
    _message = "{message}"


def resource(i):
    r = {
        "name": f"server-{i}",
        "provider": "aws",
        "account": "123456789012",
        "cloud_service_group": "EC2",
        "cloud_service_type": "Instance",
        "region_code": "us-east-1" if i % 2 == 0 else "eu-west-1",
        "reference": {"resource_id": f"i-{i:08x}", "external_link": f"https://console/{i}"},
        "tags": {"index": str(i)},
        "data": {
            "hardware": {"core": 2 + i % 3, "memory": 4.5},
            "disks": [{"device": "/dev/xvda", "size": 8 * (i + 1)}],
            "big": 2 ** 40 + i,
            # What the EC2 collector leaves for the CloudWatch monitoring plugin.
            "cloudwatch": {
                "region_name": "us-east-1" if i % 2 == 0 else "eu-west-1",
                "metrics_info": [{"Namespace": "AWS/EC2",
                                  "Dimensions": [{"Name": "InstanceId", "Value": f"i-{i:08x}"}]}],
            },
        },
        "metadata": {"view": {"sub_data": {"layouts": [{"name": "x" * 50}]}}},
    }
    if i % 5 == 4:
        r["reference"] = {"external_link": f"https://console/{i}"}
    return r


def indexes(params):
    options = params.get("options", {})
    count = int(options.get("count", 3))
    task = params.get("task_options")
    if task:
        return [i for i in range(count) if i % int(task["of"]) == int(task["part"])]
    return list(range(count))


class Collector(BaseAPI, collector_pb2_grpc.CollectorServicer):
    pb2 = collector_pb2
    pb2_grpc = collector_pb2_grpc

    def init(self, request, context):
        params, _ = self.parse_request(request, context)
        return self.dict_to_message({"metadata": {
            "supported_resource_type": ["inventory.CloudService", "inventory.CloudServiceType",
                                        "inventory.Region", "inventory.ErrorResource"],
            "supported_features": ["garbage_collection"],
            "supported_schedules": ["hours"],
            "options_schema": {"type": "object", "properties": {
                "count": {"type": "integer", "minimum": 0},
                "failures": {"type": "integer", "minimum": 0},
                "hang": {"type": "number"},
                "die_after": {"type": "integer"},
                "marker": {"type": "string"},
                "error_code": {"type": "string"},
                "tasks": {"type": "integer", "minimum": 0},
            }},
        }})

    def verify(self, request, context):
        params, _ = self.parse_request(request, context)
        _LOGGER.info(f"verify params: {params}")
        secret = params.get("secret_data", {})
        if "aws_access_key_id" not in secret:
            raise ERROR_REQUIRED_PARAMETER(key="secret_data.aws_access_key_id")
        return self.empty()

    def collect(self, request, context):
        params, _ = self.parse_request(request, context)
        _LOGGER.info(f"collect params: {params}")
        options = params.get("options", {})
        if "secret_data" not in params:
            raise ERROR_REQUIRED_PARAMETER(key="secret_data")
        if options.get("error_code"):
            raise Failed(_error_code=options["error_code"], message="the test plugin refuses")
        if options.get("hang"):
            time.sleep(float(options["hang"]))
        marker = options.get("marker")
        die_after = options.get("die_after")
        dying = die_after is not None and marker and not os.path.exists(marker)
        if dying:
            open(marker, "w").close()
        yield self.dict_to_message({
            "state": "SUCCESS", "resource_type": "inventory.CloudServiceType",
            "match_rules": {"1": ["name", "group", "provider"]},
            "resource": {"name": "Instance", "group": "EC2", "provider": "aws",
                         "is_primary": True, "labels": ["Compute"], "resource_type": "inventory.CloudService"},
        })
        regions = set()
        for n, i in enumerate(indexes(params)):
            if dying and n == int(die_after):
                _LOGGER.info("dying as asked")
                os.kill(os.getpid(), signal.SIGKILL)
            r = resource(i)
            regions.add(r["region_code"])
            yield self.dict_to_message({"state": "SUCCESS", "resource_type": "inventory.CloudService",
                                        "match_rules": RULES, "resource": r})
        task = params.get("task_options")
        if task and options.get("fail_part") is not None and int(task["part"]) == int(options["fail_part"]):
            raise Failed(_error_code="ERROR_TEST_PART", message=f"part {task['part']} fails as asked")
        if not params.get("task_options"):
            for f in range(int(options.get("failures", 1))):
                yield self.dict_to_message({
                    "state": "FAILURE", "resource_type": "inventory.ErrorResource",
                    "message": f"AccessDenied: ec2:DescribeVolumes in ap-south-{f}",
                    "resource": {"provider": "aws", "cloud_service_group": "EC2",
                                 "cloud_service_type": "Volume", "resource_id": f"vol-{f}"},
                })
        for region in sorted(regions):
            yield self.dict_to_message({
                "state": "SUCCESS", "resource_type": "inventory.Region",
                "match_rules": {"1": ["region_code", "provider"]},
                "resource": {"name": region.upper(), "region_code": region, "provider": "aws",
                             "tags": {"latitude": "1.5"}},
            })
