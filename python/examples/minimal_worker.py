#!/usr/bin/env python3
"""A complete jobmill worker in ~40 lines, without the library: what
docs/PROTOCOL.md describes, for porting to another language.
It upper-cases each job's payload. No batching, no POLL: it answers every
job before reading the next, which the protocol allows."""
import os, socket, struct

sock = socket.socket(fileno=int(os.environ["JOBMILL_FD"]))
buf = b""

def send(kind, body=b""):
    sock.sendall(struct.pack("<IB", len(body), kind) + body)

def recv_frame():
    global buf
    while True:
        if len(buf) >= 5:
            n, kind = struct.unpack_from("<IB", buf)
            if len(buf) >= 5 + n:
                body, buf = buf[5:5 + n], buf[5 + n:]
                return kind, body
        data = sock.recv(65536)
        if not data:
            raise SystemExit("coordinator went away")
        buf += data

send(0x01, b"JMWP" + struct.pack("<HI", 1, 0) + b"minimal")   # HELLO
kind, body = recv_frame()
if kind != 0x02:                                              # WELCOME
    raise SystemExit("refused: %r" % body[2:])
while True:
    kind, body = recv_frame()
    if kind == 0x12:                                          # CLOSED
        break
    if kind == 0x10:                                          # JOB
        job_id, seq, attempt, pkind = struct.unpack_from("<QQIB", body)
        result = body[21:].upper()
        send(0x20, struct.pack("<QB", job_id, 0) + result)    # RESULT
