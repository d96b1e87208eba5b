"""The gateway replica's own listening socket (services/gateway/deployments.py: listen_socket)."""
from __future__ import annotations

import socket

import pytest

from common.transport import free_port
from services.gateway.deployments import listen_socket


def test_a_single_replica_refuses_a_port_someone_holds_naming_the_address():
    port = free_port()
    other = socket.socket()
    other.bind(("127.0.0.1", port))
    other.listen()
    try:
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            listen_socket("127.0.0.1", port)
        # sharing is only for the gateway's own replicas: a foreign holder is refused even then
        with pytest.raises(RuntimeError, match="Address already in use"):
            listen_socket("127.0.0.1", port, reuse_port=True)
    finally:
        other.close()


def test_replicas_on_one_node_share_the_port_and_both_accept():
    port = free_port()
    a, b = listen_socket("127.0.0.1", port, reuse_port=True), listen_socket("127.0.0.1", port, reuse_port=True)
    try:
        for s in (a, b):
            s.listen(64)
            s.setblocking(False)
        accepted = {id(a): 0, id(b): 0}
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
        for s in (a, b):
            while True:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                accepted[id(s)] += 1
                conn.close()
        for c in clients:
            c.close()
        # the kernel spreads connections over the sockets by a hash of the client's address and port:
        # 64 connections leave neither socket without one except with probability 2 * 2**-64
        assert sum(accepted.values()) == 64 and min(accepted.values()) > 0, accepted
    finally:
        a.close()
        b.close()
