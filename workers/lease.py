"""Leases: who decodes a request, and the fence that keeps everyone else from writing it.

Theory of operation.  A worker that starts a request (from a Celery task, or by taking it
over) *claims* it: one Lua script sets the request's lease key ``tokenrelay:{id}:lease`` to
``<worker id>/<attempt>`` with a TTL of a few seconds (`TOKENRELAY_LEASE_S`, default 5) and
counts the attempt in the request's meta hash.  Every engine step then runs one *publish*
script per held request, in the step's single round trip, which

1. checks that the lease still holds this worker's value (else: ``lost``, nothing written),
2. checks that the stream's last entry is the one this worker wrote last (else:
   ``conflict``; or, when the last entry is the last one of this very call, a resend of a
   round trip whose first send had landed: ``ok``, nothing written twice),
3. appends the step's records with their explicit ids ``<seq+1>-0``,
4. renews the lease (or deletes it with the final record), refreshes the TTLs, and
5. answers whether the request's cancel key exists.

All keys of one request share its hash tag, so the script is atomic on one Redis Cluster
slot.  Each step also ZADDs the held requests to the global index ``tokenrelay:leases``
(request id -> lease expiry in unix ms).  Every live worker looks there about once a second
for expired leases; a request whose lease expired and whose stream has not ended is claimed
again (``takeover``: attempt + 1) and resumes from what its stream holds.

A request's final publish does not remove it from the index: it sets its score one lease
period ahead, like a renewal.  The scan that finds it due checks (``ENDED``, read-only, in one
pipelined round trip for all due entries) that its stream still ends and only then removes it.
Why: the index lives on another node than the request in a Redis Cluster.  A master that dies
right after acknowledging the final record can leave a promoted replica without it (replication
is asynchronous) while the leases node keeps a removal: the stream would never end.  Kept in
the index, the request is found again, not ended, and taken over like any expired lease.  A worker frozen
past its lease (SIGSTOP, a stalled VM) that wakes up finds ``lost`` at its next step and
drops the request without writing: at most one step is ever decoded twice, and never
published twice.  A request claimed more than `TOKENRELAY_MAX_ATTEMPTS` times (it keeps
killing its workers) is ended with an ``error`` record of type ``too_many_attempts``.
"""

from __future__ import annotations

# Whether the stream KEYS[1] ends with a final record (the only record with a usage).
_STREAM_ENDED = """
local function ended()
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #top == 0 then return false end
  local f = top[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'r' then
      local ok, rec = pcall(cmsgpack.unpack, f[i + 1])
      return ok and type(rec) == 'table' and type(rec['usage']) == 'table'
    end
  end
  return false
end
local function final_status(status)
  return status == 'finished' or status == 'cancelled' or status == 'failed'
end
"""

# KEYS: deltas, lease, meta.  ARGV: worker id, lease ms, ttl s, job JSON ('' = keep).
# Returns {'ended', status} | {'owned', holder} | {'claimed', owner, attempt}.
CLAIM = (
    _STREAM_ENDED
    + """
local status = redis.call('HGET', KEYS[3], 'status')
if final_status(status) then return {'ended', status} end
if ended() then return {'ended', 'finished'} end
local holder = redis.call('GET', KEYS[2])
if holder then return {'owned', holder} end
local attempt = redis.call('HINCRBY', KEYS[3], 'attempts', 1)
local owner = ARGV[1] .. '/' .. attempt
redis.call('SET', KEYS[2], owner, 'PX', ARGV[2])
redis.call('HSET', KEYS[3], 'status', 'running', 'worker', ARGV[1])
if ARGV[4] ~= '' then redis.call('HSETNX', KEYS[3], 'job', ARGV[4]) end
redis.call('EXPIRE', KEYS[3], ARGV[3])
return {'claimed', owner, attempt}
"""
)

# KEYS: deltas, lease, meta, cancel.
# ARGV: owner, lease ms, ttl s, expected last entry id, final status ('' = not final),
#       tokens so far, then entry id / record pairs.
# Returns {'ok', cancel flag} | {'lost', holder or ''} | {'conflict', last entry id}.
PUBLISH = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'lost', holder} end
local last = '0-0'
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then last = top[1][1] end
if last ~= ARGV[4] then
  if #ARGV < 8 or last ~= ARGV[#ARGV - 1] then
    if not holder then return {'lost', ''} end
    return {'conflict', last}
  end
else
  for i = 7, #ARGV, 2 do redis.call('XADD', KEYS[1], ARGV[i], 'r', ARGV[i + 1]) end
end
if ARGV[5] ~= '' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[3], 'status', ARGV[5], 'tokens', ARGV[6])
else
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  redis.call('HSET', KEYS[3], 'tokens', ARGV[6])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return {'ok', redis.call('EXISTS', KEYS[4])}
"""

# KEYS: lease.  ARGV: owner.  Gives a lease up (warm shutdown hand-off) if it is still ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: deltas, meta.  Read-only: 1 when the request needs no worker any more (its stream
# ends, its meta says it ended, or its job is gone with its expired keys), else 0.  The scan's
# check before it drops a due entry from the lease index (final status and final record are
# written by one publish script, so a lost final write loses both).
ENDED = (
    _STREAM_ENDED
    + """
local status, job = unpack(redis.call('HMGET', KEYS[2], 'status', 'job'))
if final_status(status) or not job or ended() then return 1 end
return 0
"""
)

SCRIPTS = {"claim": CLAIM, "publish": PUBLISH, "release": RELEASE, "ended": ENDED}
