from spaceone.api.monitoring.plugin import data_source_pb2, data_source_pb2_grpc
from spaceone.core.error import ERROR_REQUIRED_PARAMETER
from spaceone.core.pygrpc import BaseAPI

# As the CloudWatch plugin answers.
METADATA = {
    "supported_resource_type": ["inventory.Server", "inventory.CloudService"],
    "supported_stat": ["AVERAGE", "MAX", "MIN", "SUM"],
    "required_keys": ["data.cloudwatch"],
    "supported_providers": ["aws"],
}


class DataSource(BaseAPI, data_source_pb2_grpc.DataSourceServicer):
    pb2 = data_source_pb2
    pb2_grpc = data_source_pb2_grpc

    def init(self, request, context):
        self.parse_request(request, context)
        return self.dict_to_message({"metadata": METADATA})

    def verify(self, request, context):
        params, _ = self.parse_request(request, context)
        if "aws_access_key_id" not in params.get("secret_data", {}):
            raise ERROR_REQUIRED_PARAMETER(key="secret_data.aws_access_key_id")
        return self.empty()
