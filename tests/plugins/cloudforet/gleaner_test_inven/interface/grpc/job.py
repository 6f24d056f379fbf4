from spaceone.api.inventory.plugin import job_pb2, job_pb2_grpc
from spaceone.core.pygrpc import BaseAPI


class Job(BaseAPI, job_pb2_grpc.JobServicer):
    pb2 = job_pb2
    pb2_grpc = job_pb2_grpc

    def get_tasks(self, request, context):
        params, _ = self.parse_request(request, context)
        n = int(params.get("options", {}).get("tasks", 0))
        return self.dict_to_message({"tasks": [
            {"task_options": {"part": p, "of": n}} for p in range(n)
        ]})
