from spaceone.core.pygrpc.server import GRPCServer

from .collector import Collector
from .job import Job

app = GRPCServer()
app.add_service(Collector)
app.add_service(Job)
