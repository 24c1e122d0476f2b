"""The spool on its own: framing, order, bounds, rotation, crash recovery, adoption."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from router.capture.spool import MAGIC, Spool


def _drain(spool: Spool, per_read: int = 7) -> list[tuple[str, str, bytes]]:
    out: list[tuple[str, str, bytes]] = []
    while spool.pending:
        res = spool.read(per_read)
        for b in res.batches:
            out += [(b.key, b.batch_id, p) for p in b.payloads]
        spool.commit(res.segment, res.end)
    return out


def test_round_trip_in_order_across_rotation_then_segments_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000, fsync="always", segment_bytes=2000)
    spool.open()
    written = []
    for b in range(40):
        key = "t:pairs" if b % 3 else "t:outcomes"
        payloads = [f'{{"n":{b * 10 + i}}}'.encode() for i in range(10)]
        assert spool.append(key, f"b{b}", payloads) == 10
        written += [(key, f"b{b}", p) for p in payloads]
    assert len(spool.segments) > 5  # rotated
    assert _drain(spool) == written
    assert not list(tmp_path.glob("*.seg")) and spool.bytes == 0
    spool.close()
    assert not list(tmp_path.iterdir())  # lock file removed with an empty spool


def test_bounded_drops_what_does_not_fit(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=4096, fsync="never")
    spool.open()
    stored = sum(spool.append("k", "b", [b"x" * 100] * 10) for _ in range(10))
    assert 0 < stored < 100
    assert spool.bytes <= 4096
    assert len(_drain(spool)) == stored
    spool.close()


def test_progress_survives_restart_and_torn_last_frame_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, fsync="batch")
    spool.open()
    for b in range(10):
        spool.append("k", f"b{b}", [b"%d" % i for i in range(b * 10, b * 10 + 10)])
    res = spool.read(30)
    assert res.entries == 30
    spool.commit(res.segment, res.end)  # 30 replayed, then the process "dies"
    seg = spool.segments[0].path
    spool._close_active(sync=True)
    with open(seg, "ab") as f:  # a crash in the middle of writing the next frame
        f.write(b"\x20\x00\x00\x00\x99\x99")
    spool.close()

    again = Spool(tmp_path, max_bytes=1 << 20, fsync="batch")
    again.open()
    got = _drain(again)
    assert [p for _, _, p in got] == [b"%d" % i for i in range(30, 100)]
    assert not list(tmp_path.glob("*.seg"))
    again.close()


def test_crc_mismatch_ends_the_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, fsync="never")
    spool.open()
    spool.append("k", "b", [b"first", b"second", b"third"])
    seg = spool.segments[0].path
    spool._close_active(sync=False)
    data = bytearray(seg.read_bytes())
    i = data.index(b"second")
    data[i] ^= 0xFF
    seg.write_bytes(bytes(data))
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20)
    again.open()
    res = again.read(10)
    assert [p for b in res.batches for p in b.payloads] == [b"first"]
    assert res.corrupt_bytes > 0
    again.commit(res.segment, res.end)
    assert not again.pending and not list(tmp_path.glob("*.seg"))
    again.close()


_CHILD = """
import os, sys
from router.capture.spool import Spool
s = Spool(sys.argv[1], max_bytes=1 << 20, fsync="always")
s.open()
s.append("k", "b", [b"from-%d-%d" % (os.getpid(), i) for i in range(5)])
print(os.getpid(), flush=True)
os._exit(0)  # dies without closing: lock released by the kernel, segments left behind
"""


def test_segments_of_a_dead_writer_are_adopted_but_a_live_ones_are_not(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True,
                         text=True, check=True, cwd=root)  # fmt: skip
    dead_pid = int(out.stdout.strip())
    # a "live" writer: hold the flock of another lock file with its own segment
    live_lock = tmp_path / "writer-999999.0.lock"
    fd = os.open(live_lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    (tmp_path / f"{1:020d}-999999.0.seg").write_bytes(MAGIC)
    try:
        spool = Spool(tmp_path, max_bytes=1 << 20)
        rec = spool.open()
        assert rec.segments == 1
        got = [p for _, _, p in _drain(spool)]
        assert got == [b"from-%d-%d" % (dead_pid, i) for i in range(5)]
        assert (tmp_path / f"{1:020d}-999999.0.seg").exists()  # not adopted: owner alive
        assert not (tmp_path / f"writer-{dead_pid}.0.lock").exists()
        second = Spool(tmp_path, max_bytes=1 << 20)  # same process: its own slot
        second.open()
        assert second.owner == f"{os.getpid()}.1" and spool.owner == f"{os.getpid()}.0"
        second.close()
        spool.close()
    finally:
        os.close(fd)


def test_a_batch_is_never_split_between_reads(tmp_path: Path) -> None:
    import router.capture.spool as sp

    spool = Spool(tmp_path, max_bytes=1 << 22, fsync="never")
    spool.open()
    sizes = [7, 13, 1, 29, 5, 40, 3]
    for i, size in enumerate(sizes):
        spool.append("k", f"b{i}", [b"y" * 50] * size)
    for per_read in (1, 10, 30):  # entry limits that fall inside batches
        res = spool.read(per_read)
        assert len(res.batches[0].payloads) == sizes[0]
        assert all(len(b.payloads) == sizes[int(b.batch_id[1:])] for b in res.batches)
    setattr(sp, "READ_CHUNK", 300)  # noqa: B010 - byte chunks that end inside batches
    try:
        seen: list[int] = []
        while spool.pending:
            res = spool.read(1000)
            seen += [len(b.payloads) for b in res.batches]
            spool.commit(res.segment, res.end)
        assert seen == sizes
    finally:
        setattr(sp, "READ_CHUNK", 4 * 1024 * 1024)  # noqa: B010
    spool.close()
