"""Test payload: hold MEBIBYTES of touched memory, then sleep.

``hog.py MEBIBYTES SECONDS``"""

import sys
import time

size = int(sys.argv[1]) << 20
block = bytearray(size)
for i in range(0, size, 4096):
    block[i] = 1
print(f"holding {sys.argv[1]} MiB", flush=True)
time.sleep(float(sys.argv[2]))
