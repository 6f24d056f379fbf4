from spaceone.api.cost_analysis.plugin import data_source_pb2, data_source_pb2_grpc
from spaceone.core.error import ERROR_REQUIRED_PARAMETER
from spaceone.core.pygrpc import BaseAPI

# Where a record's account is, as the hyperbilling plugin declares it; the currency is not the
# default one, so that a host which ignores it is caught.
METADATA = {
    "currency": "EUR",
    "supported_secret_types": ["MANUAL"],
    "data_source_rules": [{
        "name": "match_service_account",
        "conditions_policy": "ALWAYS",
        "actions": {"match_service_account": {"source": "additional_info.Account ID",
                                              "target": "data.account_id"}},
        "options": {"stop_processing": True},
    }],
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
