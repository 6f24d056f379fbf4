from spaceone.core.pygrpc.server import GRPCServer

from .cost import Cost
from .data_source import DataSource
from .job import Job

app = GRPCServer()
app.add_service(DataSource)
app.add_service(Job)
app.add_service(Cost)
