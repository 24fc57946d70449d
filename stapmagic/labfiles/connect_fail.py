"""Workload: 2 good TCP connects, then 2 that tcp_v4_connect() itself rejects.

- sin_family AF_UNIX (1) on an AF_INET socket -> -EAFNOSUPPORT (-97)
- addrlen 8, shorter than struct sockaddr_in  -> -EINVAL (-22)
libc's connect() is called directly: Python's socket.connect() would refuse both itself.
"""
import ctypes
import os
import socket
import struct

libc = ctypes.CDLL(None, use_errno=True)
print(f"workload pid={os.getpid()}", flush=True)
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(8)
port = server.getsockname()[1]
for _ in range(2):
    client = socket.create_connection(("127.0.0.1", port))
    peer, _ = server.accept()
    peer.close()
    client.close()


def raw_connect(family: int, addrlen: int) -> tuple[int, int]:
    sock = socket.socket()
    addr = struct.pack("<HH4s8x", family, socket.htons(port), socket.inet_aton("127.0.0.1"))
    buf = ctypes.create_string_buffer(addr, 16)
    rc = libc.connect(sock.fileno(), buf, addrlen)
    err = ctypes.get_errno()
    sock.close()
    return rc, err


print("AF_UNIX family ->", raw_connect(1, 16), flush=True)
print("short addrlen ->", raw_connect(2, 8), flush=True)
