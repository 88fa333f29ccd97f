"""Test payload: count to TARGET, checkpointing the count as it goes, and
resume from APPORTION_RESUME_FROM when given one.

``counter.py OUT_DIR TARGET [STEP_SECONDS]``"""

import json
import os
import signal
import sys
import time

out, target = sys.argv[1], int(sys.argv[2])
step = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
env = os.environ
checkpoint = env["APPORTION_CHECKPOINT_DIR"]
resume = env.get("APPORTION_RESUME_FROM")


def save(n):
    tmp = os.path.join(checkpoint, "counter.tmp")
    with open(tmp, "w") as fh:
        fh.write(str(n))
    os.replace(tmp, os.path.join(checkpoint, "counter"))


def stop(signum, frame):
    save(count)
    print(f"stopped at {count}", flush=True)
    sys.exit(0)


count = 0
if resume:
    with open(os.path.join(resume, "counter")) as fh:
        count = int(fh.read())
first = count
signal.signal(signal.SIGTERM, stop)
print(f"starting at {first} (resume from {resume})", flush=True)
with open(os.path.join(out, env["APPORTION_TASK_ID"] + ".start.json"), "w") as fh:
    json.dump({"first": first, "resume": resume, "attempt": int(env["APPORTION_ATTEMPT"]),
               "node": env["APPORTION_NODE"], "start": time.time()}, fh)
while count < target:
    count += 1
    save(count)
    time.sleep(step)
print(f"resumed from {first}, counted to {count}", flush=True)
with open(os.path.join(out, "done.json"), "w") as fh:
    json.dump({"first": first, "count": count, "resume": resume}, fh)
