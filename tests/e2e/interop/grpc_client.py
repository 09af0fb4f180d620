"""A capture app's view of uplinkd, written the way a Python app author would: code generated
from proto/ with grpcio-tools, a default `grpc.insecure_channel("unix://...")`, no options.

usage: grpc_client.py GENERATED_DIR SOCKET FILE
Checks health, enqueues FILE, follows Watch until the job ends; prints one JSON object.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
import health_pb2  # noqa: E402
import health_pb2_grpc  # noqa: E402
import uplink_pb2  # noqa: E402
import uplink_pb2_grpc  # noqa: E402

socket, path = sys.argv[2], sys.argv[3]
channel = grpc.insecure_channel(f"unix://{socket}")
health = health_pb2_grpc.HealthStub(channel)
uplink = uplink_pb2_grpc.UplinkStub(channel)

status = {}
for service in ("", "uplink.v1.Uplink"):
    reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    status[service or "daemon"] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

job_id = uplink.Enqueue(uplink_pb2.EnqueueRequest(path=path), timeout=10).job_id

kinds = []
final = None
# Bounded: the stream ends when the job does, and the call has a deadline.
for event in uplink.Watch(uplink_pb2.WatchRequest(job_id=job_id), timeout=120):
    kind = event.WhichOneof("kind")
    kinds.append(kind)
    if kind in ("completed", "failed", "cancelled"):
        final = getattr(event, kind).job
        break
    if kind == "snapshot" and event.snapshot.state in (
        uplink_pb2.JOB_STATE_COMPLETED,
        uplink_pb2.JOB_STATE_FAILED,
        uplink_pb2.JOB_STATE_CANCELLED,
    ):
        final = event.snapshot
        break

print(json.dumps({
    "health": status,
    "job_id": job_id,
    "events": kinds,
    "state": uplink_pb2.JobState.Name(final.state) if final else None,
    "server_sha256": final.server_sha256 if final else None,
    "error": final.error_code if final else None,
}))
