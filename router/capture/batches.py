"""Exactly-once batch writes to the capture streams: batch ids, the Lua script, its arguments.

**Exactly once, whatever Redis does.** Every write goes through one Lua script per (stream,
batch). A batch id is ``<writer nonce>.<seq>``: ``seq`` grows by one per batch of this writer
process, and a writer's batches reach each stream in ``seq`` order (a failed batch and every
later one go to the spool and are replayed in order). So one *high-water mark* per (stream,
writer) is enough to recognise a batch that is already in Redis: the script reads
``<stream>:writer:<nonce>``; a ``seq`` at or below it is a duplicate (``-1``); otherwise it
adds every entry of the batch (``XADD``), trims the stream (``MAXLEN ~`` and/or ``MINID ~``) and
sets the mark to ``seq`` with ``EX dedupe_ttl_s``. A script runs atomically, so a batch is in the
stream entirely or not at all and can never be applied twice. The marks cost one small key per
writer process and stream, whatever the traffic (the earlier design kept one key per batch:
1.6 million keys a day per worker at 400 req/s). At replay the script also honours the per-batch
key of that earlier design (``<stream>:batch:<id>``), so a spool left by it replays exactly once.
"""

from __future__ import annotations

import time
from typing import Any

from router.capture.keys import batch_marker_key, writer_mark_key
from router.config import CaptureConfig

Item = tuple[str, Any]  # ("pairs" | "outcomes", PendingRecord | dict)
Group = tuple[str, str, list[bytes]]  # (stream key, batch id, payloads)

# KEYS[1] stream, KEYS[2] the writer's high-water mark, KEYS[3] (replays only) the per-batch
# marker of the earlier design; ARGV: ttl_s, maxlen|'', minid|'', seq, payload...
# Returns the number of entries added, or -1 when the batch was already written.
WRITE_BATCH_LUA = """
local seq = tonumber(ARGV[4])
if seq <= tonumber(redis.call('GET', KEYS[2]) or '0') then return -1 end
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
for i = 5, #ARGV do redis.call('XADD', KEYS[1], '*', 'r', ARGV[i]) end
if ARGV[2] ~= '' then redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[3]) end
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[1])
return #ARGV - 4
"""


def split_batch_id(batch_id: str) -> tuple[str, int]:
    """``<nonce>.<seq hex>`` → (nonce, seq). An id of another form is its own nonce with
    ``seq`` 1, which de-duplicates it like a per-batch marker would."""
    nonce, _, seq = batch_id.rpartition(".")
    try:
        n = int(seq, 16)
    except ValueError:
        return batch_id, 1
    return (nonce, n) if nonce and n > 0 else (batch_id, 1)


def script_args(
    cfg: CaptureConfig, key: str, bid: str, payloads: list[bytes], replay: bool
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the batch script for one (stream, batch)."""
    nonce, seq = split_batch_id(bid)
    keys = [key, writer_mark_key(key, nonce)]
    if replay:  # a spool written before the high-water marks may hold such a batch
        keys.append(batch_marker_key(key, bid))
    minid = ""
    if cfg.retention_s:
        minid = str(int((time.time() - cfg.retention_s) * 1000))
    maxlen = cfg.stream_maxlen or ""
    return keys, [cfg.dedupe_ttl_s, maxlen, minid, seq, *payloads]


async def run_script(client: Any, script: Any, cfg: CaptureConfig, groups: list[Group],
                     cluster: bool, replay: bool) -> list[int]:  # fmt: skip
    """Run the batch script (registered on ``client``) for every group; ``-1`` marks a
    batch that was already written. Raises whatever the client raises."""
    if not cluster:
        async with client.pipeline(transaction=False) as pipe:
            for key, bid, payloads in groups:
                await script(*script_args(cfg, key, bid, payloads, replay), pipe)
            return [int(r) for r in await pipe.execute()]
    # cluster: one script call at a time (each routed to its slot's master). redis-py's
    # asyncio cluster client loses connections under concurrent use (gather), and one
    # batch script carries hundreds of entries, so sequential calls are not the bottleneck.
    out: list[int] = []
    for key, bid, payloads in groups:
        out.append(int(await script(*script_args(cfg, key, bid, payloads, replay))))
    return out
