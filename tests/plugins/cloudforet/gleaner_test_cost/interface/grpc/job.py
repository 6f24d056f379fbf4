import datetime
import logging

from spaceone.api.cost_analysis.plugin import job_pb2, job_pb2_grpc
from spaceone.core.pygrpc import BaseAPI

_LOGGER = logging.getLogger("spaceone")


class Job(BaseAPI, job_pb2_grpc.JobServicer):
    pb2 = job_pb2
    pb2_grpc = job_pb2_grpc

    def get_tasks(self, request, context):
        params, _ = self.parse_request(request, context)
        _LOGGER.info(f"get_tasks params: {params}")
        options = params.get("options", {})
        # As the cost-explorer plugin does: an aware time, compared with an aware one.
        start = datetime.datetime.fromisoformat(params["start"].replace("Z", "+00:00"))
        if start.tzinfo is None:
            raise ValueError("can't compare offset-naive and offset-aware datetimes")
        month = start.strftime("%Y-%m")
        changed_from = options.get("changed_from", month)
        tasks = [{
            "task_options": {"account_id": account, "start": start.strftime("%Y-%m-%d")},
            "task_changed": {"start": changed_from, "filter": {"additional_info.Account ID": account}},
        } for account in options.get("accounts", ["111111111111"])]
        return self.dict_to_message({"tasks": tasks, "changed": [{"start": changed_from}]})
