from spaceone.core.pygrpc.server import GRPCServer

from .data_source import DataSource
from .metric import Metric

app = GRPCServer()
app.add_service(DataSource)
app.add_service(Metric)
