"""Free TCP ports on the loopback address, for multi-worker tests."""

import socket


def free_ports(n: int) -> list:
    """n ports that were free on 127.0.0.1 a moment ago (bound, read, released)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
