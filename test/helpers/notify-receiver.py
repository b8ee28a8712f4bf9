# A stand-in for systemd's notification socket (tests only): binds a unix datagram socket at
# argv[1] ("/path" or "@abstract"), asks the kernel for each sender's credentials (SO_PASSCRED),
# and prints one JSON line per datagram: {"pid": sender pid, "msg": payload}. The first line,
# {"bound": true}, says it is listening. Ends on SIGTERM or when stdin closes.
import json
import os
import select
import socket
import struct
import sys

addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind("\0" + addr[1:] if addr.startswith("@") else addr)
print(json.dumps({"bound": True}), flush=True)
while True:
    r, _, _ = select.select([s, sys.stdin], [], [])
    if sys.stdin in r and not os.read(sys.stdin.fileno(), 4096):
        break
    if s in r:
        msg, anc, _, _ = s.recvmsg(65536, socket.CMSG_SPACE(12))
        pid = None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", data[:12])[0]
        print(json.dumps({"pid": pid, "msg": msg.decode("utf-8", "replace")}), flush=True)
