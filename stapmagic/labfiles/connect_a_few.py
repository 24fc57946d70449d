"""Workload: N TCP connects (default 3) to a listener on 127.0.0.1; prints its pid first.

Every connect goes through tcp_v4_connect() exactly once, so a probe on it must see N rows.
"""
import os
import socket
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
print(f"workload pid={os.getpid()}", flush=True)
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(max(8, n))
port = server.getsockname()[1]
for _ in range(n):
    client = socket.create_connection(("127.0.0.1", port))
    peer, _ = server.accept()
    peer.close()
    client.close()
print(f"did {n} connects to 127.0.0.1:{port}", flush=True)
