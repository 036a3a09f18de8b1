"""Run under ``torchrun``: stands in for a training process that, on SIGTERM, finishes its
current step (``argv[2]`` seconds) and then writes its checkpoint (``<argv[1]>/done<rank>``).
Writes ``<argv[1]>/ready<rank>`` once its handler is installed."""
import os
import signal
import sys
import time

out, step_s = sys.argv[1], float(sys.argv[2])
rank = os.environ.get("RANK", "0")
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
open(os.path.join(out, f"ready{rank}"), "w").close()
deadline = time.monotonic() + 120
while not stop and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(step_s)  # the rest of the step
open(os.path.join(out, f"done{rank}"), "w").close()
