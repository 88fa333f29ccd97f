"""Test payload: record what this task was given and when it ran.

``record.py OUT_DIR SECONDS``: writes ``<task id>.start.json`` at once and
``<task id>.json`` when done, and notes an ``overlap`` if another process of
the same job was still alive when this one started (a job must never run
twice at once). ``SECONDS`` may be ``FIRST,LATER``: the job's first process
sleeps FIRST, any later attempt LATER, so a test can hold the first attempt
until it is killed however slowly the machine runs."""

import json
import os
import sys
import time

start = time.time()
out, durations = sys.argv[1], [float(s) for s in sys.argv[2].split(",")]
env = os.environ
job, task = env["APPORTION_JOB_ID"], env["APPORTION_TASK_ID"]


def write(path, body):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(body, fh)
    os.replace(tmp, path)


def alive(pid):
    """Running, not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


pid_file = os.path.join(out, job + ".pid")
# An earlier attempt of this job wrote its pid: this one is a later attempt.
seconds = durations[-1] if os.path.exists(pid_file) else durations[0]
overlap = None
try:
    with open(pid_file) as fh:
        old = int(fh.read())
    if alive(old):
        overlap = old
except (OSError, ValueError):
    pass
write(pid_file, os.getpid())
record = {
    "job": job, "task": task, "attempt": int(env["APPORTION_ATTEMPT"]),
    "node": env["APPORTION_NODE"], "allocation": env["APPORTION_ALLOCATION_ID"],
    "cuda": env.get("CUDA_VISIBLE_DEVICES"), "devices": json.loads(env["APPORTION_DEVICES"]),
    "resources": json.loads(env["APPORTION_RESOURCES"]), "start": start, "pid": os.getpid(),
    "overlap": overlap, "checkpoint_dir": env["APPORTION_CHECKPOINT_DIR"],
}
write(os.path.join(out, task + ".start.json"), record)
time.sleep(seconds)
print(f"task {task} of {job} ran {seconds}s on {record['node']}")
record["end"] = time.time()
write(os.path.join(out, task + ".json"), record)
