#!/bin/sh
# Serves the test monitoring data source the way Cloudforet serves its plugins: `spaceone run
# grpc-server`, from the virtual environment beside this script (the test support makes it),
# on the port Gleaner passes in SPACEONE_PORT.
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/.venv/bin/spaceone" run grpc-server gleaner_test_mon -s "$here"
