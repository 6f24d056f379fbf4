"""A Cloudforet cost data source for Gleaner's tests.

`Job.get_tasks` answers one sub-task per account of the `accounts` option (default
["111111111111"]), each from the request's `start` day, and `changed` from `changed_from`
(default: the start's month). `Cost.get_data` streams, for every day from the task's start
through the end of the next month, three records per account:

| product     | cost      | usage_quantity | usage_unit | usage_type             | region    |
|-------------|-----------|----------------|------------|------------------------|-----------|
| AmazonEC2   | 0.1       | 24             | Hrs        | USE1-BoxUsage:t3.micro | us-east-1 |
| AmazonS3    | 0.2       | 1.5            | GB-Mo      | TimedStorage-ByteHrs   | us-east-1 |
| AWSSupport  | 1234.5678 |                |            |                        |           |

A day costs 1234.8678 exactly (as doubles, 0.1 + 0.2 is not 0.3). Records come in pages of
`page` (default 40), then an empty page, as the hyperbilling plugin sends them; the
account is in `additional_info."Account ID"`. `error_code` fails `get_data` with that
spaceone error code. `die_after` with `marker` (a file path): on the first run (the marker
absent), create the marker, send `die_after` records, then kill this process with SIGKILL.
Like real plugins, it logs every request, `secret_data` included.
"""

import datetime
import logging
import os
import signal

from spaceone.api.cost_analysis.plugin import cost_pb2, cost_pb2_grpc
from spaceone.core.error import ERROR_BASE, ERROR_REQUIRED_PARAMETER
from spaceone.core.pygrpc import BaseAPI

_LOGGER = logging.getLogger("spaceone")

DAILY = [
    {"product": "AmazonEC2", "cost": 0.1, "usage_quantity": 24, "usage_unit": "Hrs",
     "usage_type": "USE1-BoxUsage:t3.micro", "region_code": "us-east-1", "tags": {"env": "prod"}},
    {"product": "AmazonS3", "cost": 0.2, "usage_quantity": 1.5, "usage_unit": "GB-Mo",
     "usage_type": "TimedStorage-ByteHrs", "region_code": "us-east-1"},
    {"product": "AWSSupport", "cost": 1234.5678},
]


class Failed(ERROR_BASE):
    _status_code = "PERMISSION_DENIED"
    _message = "{message}"


def days(start):
    first = datetime.date.fromisoformat(start)
    following = (first.replace(day=1) + datetime.timedelta(days=32)).replace(day=1)
    end = (following + datetime.timedelta(days=32)).replace(day=1)
    day = first
    while day < end:
        yield day
        day += datetime.timedelta(days=1)


class Cost(BaseAPI, cost_pb2_grpc.CostServicer):
    pb2 = cost_pb2
    pb2_grpc = cost_pb2_grpc

    def get_data(self, request, context):
        params, _ = self.parse_request(request, context)
        _LOGGER.info(f"get_data params: {params}")
        if "secret_data" not in params:
            raise ERROR_REQUIRED_PARAMETER(key="secret_data")
        options = params.get("options", {})
        if options.get("error_code"):
            raise Failed(_error_code=options["error_code"], message="the test plugin refuses")
        task = params.get("task_options", {})
        account = task["account_id"]
        marker, die_after = options.get("marker"), options.get("die_after")
        dying = die_after is not None and marker and not os.path.exists(marker)
        if dying:
            open(marker, "w").close()
        page, size, sent = [], int(options.get("page", 40)), 0
        for day in days(task["start"]):
            for record in DAILY:
                if dying and sent == int(die_after):
                    _LOGGER.info("dying as asked")
                    os.kill(os.getpid(), signal.SIGKILL)
                sent += 1
                page.append({**record, "provider": "aws", "billed_date": day.isoformat(),
                             "additional_info": {"Account ID": account}})
                if len(page) == size:
                    yield self.dict_to_message({"results": page})
                    page = []
        if page:
            yield self.dict_to_message({"results": page})
        yield self.dict_to_message({"results": []})
