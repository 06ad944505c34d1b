"""A real moto server for the Timestream sink test, run in this process so the
test can read back what the table holds (moto keeps records in memory only).

Prints "ready PORT" once listening. On "dump" (stdin) prints one JSON line:
{"batches": [records per WriteRecords call], "records": {"DB/TABLE": [...]}}.
Stops on EOF.
"""
import contextlib
import json
import sys

from moto.server import ThreadedMotoServer
from moto.core import DEFAULT_ACCOUNT_ID as ACCOUNT_ID
from moto.timestreamwrite import models

port = int(sys.argv[1])
region = sys.argv[2]
batches = []
_write = models.TimestreamWriteBackend.write_records


def write_records(self, database_name, table_name, records):
    # Observe (not replace) the real backend: how large each call was.
    batches.append(len(records))
    return _write(self, database_name, table_name, records)


models.TimestreamWriteBackend.write_records = write_records

server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
with contextlib.redirect_stdout(sys.stderr):  # stdout carries only our protocol
    server.start()
print(f"ready {port}", flush=True)
for line in sys.stdin:
    if line.strip() == "dump":
        out = {}
        backend = models.timestreamwrite_backends[ACCOUNT_ID][region]
        for db_name, db in backend.databases.items():
            for t_name, t in db.tables.items():
                out[f"{db_name}/{t_name}"] = t.records
        print(json.dumps({"batches": batches, "records": out}), flush=True)
server.stop()
