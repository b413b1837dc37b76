"""One TCP socket's state and queues from the kernel, by exact lookup (netlink sock_diag).

The stalled-client watch needs the *server's* end of one loopback connection
(its state, and the bytes in its send queue) several times a second. Reading
/proc/net/tcp costs ~10 ms of CPU per read on a busy host (it formats every
socket), and on a 2-core machine that shows up as latency of everything else.
An exact sock_diag request makes the kernel look up the one socket by its
4-tuple instead. Linux only; callers fall back to /proc when it fails.
"""

from __future__ import annotations

import errno
import socket
import struct

NETLINK_INET_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NOCOOKIE = 0xFFFFFFFF
_LOOPBACK = socket.inet_aton("127.0.0.1") + b"\x00" * 12


class SockDiag:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_INET_DIAG)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def lookup(self, local_port: int, remote_port: int) -> tuple[int, int] | None:
        """(TCP state, send-queue bytes) of the socket 127.0.0.1:local_port -> 127.0.0.1:remote_port, or None
        when it no longer exists."""
        self.seq += 1
        sockid = struct.pack("!HH", local_port, remote_port) + _LOOPBACK + _LOOPBACK
        sockid += struct.pack("=III", 0, NOCOOKIE, NOCOOKIE)
        req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
        msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, self.seq, 0) + req
        self.sock.send(msg)
        data = self.sock.recv(8192)
        _length, kind = struct.unpack_from("=IH", data, 0)
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, 16)
            if -code == errno.ENOENT:
                return None
            raise OSError(-code, "sock_diag lookup failed")
        state = data[16 + 1]
        # inet_diag_msg: 4 one-byte fields, the 48-byte sockid, then expires, rqueue, wqueue (u32 each).
        _expires, _rqueue, wqueue = struct.unpack_from("=III", data, 16 + 4 + 48)
        return state, wqueue
