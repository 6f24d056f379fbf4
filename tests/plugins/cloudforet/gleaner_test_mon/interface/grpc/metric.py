"""A Cloudforet monitoring data source for Gleaner's tests, answering as the CloudWatch plugin.

`Metric.list` takes a resource's `data.cloudwatch` (`{region_name, metrics_info: [{Namespace,
Dimensions}]}`) and names three metrics, `CPUUtilization`, `NetworkIn` and `DiskReadOps`.
`Metric.get_data` answers one value per minute after `start` up to `end`, for each resource
of `metric_query` (keyed by resource id): the value of minute `m` (minutes since the epoch)
for the instance whose id ends in the hex number `n` is

    CPUUtilization  (m % 60) + n / 4
    NetworkIn       1000 * (m % 1440) + n
    DiskReadOps     n

Every fifth minute of NetworkIn is a gap (null), as CloudWatch leaves them. Like real plugins,
it logs every request, `secret_data` included.
"""

import datetime
import logging

from spaceone.api.monitoring.plugin import metric_pb2, metric_pb2_grpc
from spaceone.core.error import ERROR_REQUIRED_PARAMETER
from spaceone.core.pygrpc import BaseAPI

_LOGGER = logging.getLogger("spaceone")

UNITS = {"CPUUtilization": "Percent", "NetworkIn": "Bytes", "DiskReadOps": "Count"}


def value(metric, minute, n):
    if metric == "CPUUtilization":
        return (minute % 60) + n / 4
    if metric == "NetworkIn":
        return None if minute % 5 == 0 else 1000 * (minute % 1440) + n
    return n


def instant(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


class Metric(BaseAPI, metric_pb2_grpc.MetricServicer):
    pb2 = metric_pb2
    pb2_grpc = metric_pb2_grpc

    def list(self, request, context):
        params, _ = self.parse_request(request, context)
        _LOGGER.info(f"list params: {params}")
        query = params.get("query", {})
        if "metrics_info" not in query:
            raise ERROR_REQUIRED_PARAMETER(key="query.metrics_info")
        info = query["metrics_info"][0]
        return self.dict_to_message({"metrics": [{
            "key": name, "name": name, "group": info["Namespace"],
            "unit": {"x": "Timestamp", "y": unit},
            "metric_query": {"Namespace": info["Namespace"], "MetricName": name,
                             "Dimensions": info["Dimensions"]},
        } for name, unit in UNITS.items()]})

    def get_data(self, request, context):
        params, _ = self.parse_request(request, context)
        _LOGGER.info(f"get_data params: {params}")
        if "secret_data" not in params:
            raise ERROR_REQUIRED_PARAMETER(key="secret_data")
        metric = params["metric"]
        start = int(instant(params["start"]).timestamp()) // 60 + 1
        end = int(instant(params["end"]).timestamp()) // 60
        minutes = list(range(start, end + 1))
        labels = [datetime.datetime.fromtimestamp(m * 60, datetime.timezone.utc)
                  .strftime("%Y-%m-%dT%H:%M:%S.000Z") for m in minutes]
        values = {}
        for resource_id, query in params["metric_query"].items():
            if query.get("MetricName") != metric or "region_name" not in query:
                raise ERROR_REQUIRED_PARAMETER(key=f"metric_query.{resource_id}")
            n = int(query["Dimensions"][0]["Value"][2:], 16)
            values[resource_id] = [value(metric, m, n) for m in minutes]
        return self.dict_to_message({"labels": labels, "values": values})
