"""Test payload: sleep, exiting at once (code 0) on the stop signal.

``sleeper.py SECONDS``"""

import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(float(sys.argv[1]))
