#!/usr/bin/env python3
"""fdatasync latency of a 512-byte append, every 2 ms, for SECONDS (default 5) in DIR
(default /tmp/rshard-bench): run it beside a benchmark to see what the nodes' syncs cost
on the same disk.  Usage: deploy/bench/fsync-probe.py [SECONDS] [DIR]"""
import os, sys, time
seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
directory = sys.argv[2] if len(sys.argv) > 2 else "/tmp/rshard-bench"
path = os.path.join(directory, "fsync_probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
ts = []
end = time.time() + seconds
while time.time() < end:
    os.write(fd, b"x" * 512)
    t = time.perf_counter(); os.fdatasync(fd); ts.append(time.perf_counter() - t)
    time.sleep(0.002)
os.close(fd); os.remove(path)
ts.sort(); n = len(ts)
print("probe fdatasync n=%d p50 %.3f ms p90 %.3f ms p99 %.3f ms"
      % (n, ts[n // 2] * 1e3, ts[int(n * .9)] * 1e3, ts[int(n * .99)] * 1e3))
