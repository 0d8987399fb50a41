"""Two services never share a port silently (issue 10, item 10). grpcio sets SO_REUSEPORT on
Linux by default, so a second server on a taken port used to bind "fine" and take half the calls;
now only one replica's own workers share a port, behind the claim their parent holds."""

from __future__ import annotations

import errno
import re
from concurrent import futures

import grpc
import pytest

from slotlock.grpc_server import add_port, claim_port, create_server
from tests.support import TEST_SECURITY

HOST = "127.0.0.1"


def refused(port: int) -> re.Pattern[str]:
    return re.compile(rf"cannot listen on {re.escape(HOST)}:{port}: Address already in use")


async def test_a_second_server_on_a_taken_port_fails_with_a_clear_error() -> None:
    first = create_server(TEST_SECURITY)
    port = add_port(first, HOST, 0, TEST_SECURITY)
    await first.start()
    # What another stack (or an older slotlock) looks like: grpcio's defaults, SO_REUSEPORT on.
    foreign = grpc.server(futures.ThreadPoolExecutor(1))
    foreign_port = foreign.add_insecure_port(f"{HOST}:0")
    foreign.start()
    try:
        for taken in (port, foreign_port):
            second = create_server(TEST_SECURITY)
            with pytest.raises(OSError, match=refused(taken)) as caught:
                add_port(second, HOST, taken, TEST_SECURITY)
            assert caught.value.errno == errno.EADDRINUSE
    finally:
        foreign.stop(0)
        await first.stop(0)


async def test_only_one_replicas_workers_share_its_claimed_port() -> None:
    claim = claim_port(HOST, 0)
    port = claim.getsockname()[1]
    with pytest.raises(OSError, match=refused(port)):  # held before any worker listens
        claim_port(HOST, port)
    workers = [create_server(TEST_SECURITY, reuse_port=True) for _ in range(2)]
    try:
        for worker in workers:  # our own workers join the claim
            assert add_port(worker, HOST, port, TEST_SECURITY) == port
            await worker.start()
        with pytest.raises(OSError, match=refused(port)):  # another replica's claim
            claim_port(HOST, port)
        with pytest.raises(OSError, match=refused(port)):  # a single-process service
            add_port(create_server(TEST_SECURITY), HOST, port, TEST_SECURITY)
    finally:
        for worker in workers:
            await worker.stop(0)
        claim.close()
    claim_port(HOST, port).close()  # free again once the replica is gone
