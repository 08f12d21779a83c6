"""The Lua scripts of :class:`~scheduler.state.redis_store.RedisStore` (text only, no client).

Every check-then-change is one script, so two replicas never hand out the same block
or oversubscribe a worker. Scripts that change what a listing shows (a lease, free
blocks, a load, a registration) record the change: ``INCR seq`` and
``ZADD changes seq NAME`` (:data:`CHANGED`, whose keys are always ``KEYS[1]`` and
``KEYS[2]``). A replica keeps its listing and asks only for the workers changed since
the ``seq`` it last saw (:data:`SYNC`).

Keys are declared (``KEYS``) everywhere except in :data:`SYNC`, which reads the keys of
the workers it finds in the change log: like the multi-key scripts, that assumes one
Redis (or a Sentinel primary), not Redis Cluster.
"""

from __future__ import annotations

#: Prelude of the scripts that change a listing: ``KEYS[1]`` seq, ``KEYS[2]`` changes.
CHANGED = """
local function changed(name)
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[1]), name)
end
"""

# KEYS: seq, changes, workers, w, epoch, used, jobs.
# ARGV: name, registration JSON, ttl, expires, nblocks, safety ms, rid.
REGISTER = CHANGED + """
local epoch = redis.call('INCR', KEYS[5])
redis.call('DEL', KEYS[4], KEYS[6], KEYS[7])
redis.call('HSET', KEYS[4], 'reg', ARGV[2], 'rid', ARGV[7], 'epoch', epoch, 'ttl', ARGV[3],
           'expires', ARGV[4], 'nblocks', ARGV[5], 'safety', ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[4], ARGV[6])
changed(ARGV[1])
return epoch
"""

# The safety-net TTL (ms) of a worker's keys is kept in its hash ('safety').

# KEYS: seq, changes, workers, w, used, jobs. ARGV: name, now.
HEARTBEAT = CHANGED + """
local h = redis.call('HMGET', KEYS[4], 'expires', 'ttl', 'epoch', 'safety')
if not h[1] or tonumber(h[1]) <= tonumber(ARGV[2]) then return false end
local expires = string.format('%.17g', tonumber(ARGV[2]) + tonumber(h[2]))
redis.call('HSET', KEYS[4], 'expires', expires)
redis.call('ZADD', KEYS[3], expires, ARGV[1])
for i = 4, 6 do redis.call('PEXPIRE', KEYS[i], h[4]) end
changed(ARGV[1])
return {h[3], h[2], expires}
"""

# KEYS: seq, changes, workers, w, used, jobs. ARGV: name, now ('' removes unconditionally).
REMOVE = CHANGED + """
if ARGV[2] ~= '' then
  local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
  if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
end
local gone = redis.call('ZREM', KEYS[3], ARGV[1]) + redis.call('DEL', KEYS[4])
redis.call('DEL', KEYS[5], KEYS[6])
redis.call('RPUSH', KEYS[6], '')
redis.call('PEXPIRE', KEYS[6], 10000)
if gone > 0 then
  changed(ARGV[1])
  return 1
end
return 0
"""

# Several workers' entries, taking blocks of each, all or nothing: first every check,
# then every change. KEYS: seq, changes, then w, used per worker. ARGV: now, then name,
# count, known rid per worker, and last '1' to refuse draining workers ('' not to). The
# registration JSON comes back only when the worker's rid is not the one the caller knows
# (it caches parsed registrations by rid).
# {-1, i}: worker i not live; {-3, i}: worker i draining; {-2, i, free}: too few free
# blocks; {0, {epoch, ttl, expires, free after, rid, JSON or false, {blocks}, draining
# ('1' or '')} per worker}.
TAKE = CHANGED + """
local now = tonumber(ARGV[1])
local refuse = ARGV[#ARGV] == '1'
local seen = {}
for i = 1, (#KEYS - 2) / 2 do
  local h = redis.call('HMGET', KEYS[1 + 2 * i], 'expires', 'nblocks', 'safety', 'epoch',
                       'ttl', 'rid', 'draining')
  if not h[1] or tonumber(h[1]) <= now then return {-1, i} end
  if refuse and h[7] then return {-3, i} end
  local free = tonumber(h[2]) - redis.call('BITCOUNT', KEYS[2 + 2 * i])
  local count = tonumber(ARGV[3 * i])
  if count > free then return {-2, i, free} end
  seen[i] = {h, free, count}
end
local out = {0}
for i, s in ipairs(seen) do
  local h, used, name = s[1], KEYS[2 + 2 * i], ARGV[3 * i - 1]
  local blocks = {}
  local byte = 0
  for _ = 1, s[3] do
    local pos = redis.call('BITPOS', used, 0, byte)
    if pos < 0 then pos = redis.call('STRLEN', used) * 8 end
    redis.call('SETBIT', used, pos, 1)
    blocks[#blocks + 1] = pos
    byte = math.floor(pos / 8)
  end
  if s[3] > 0 then
    redis.call('PEXPIRE', used, h[3])
    changed(name)
  end
  local reg = false
  if h[6] ~= ARGV[3 * i + 1] then reg = redis.call('HGET', KEYS[1 + 2 * i], 'reg') end
  out[#out + 1] = {h[4], h[5], h[1], s[2] - s[3], h[6] or '', reg, blocks, h[7] or ''}
end
return out
"""

# Mark a live worker draining (kept by heartbeats; REGISTER's DEL clears it).
# KEYS: seq, changes, w. ARGV: name, now. 1: marked (or was); 0: not live.
DRAIN = CHANGED + """
local h = redis.call('HMGET', KEYS[3], 'expires', 'draining')
if not h[1] or tonumber(h[1]) <= tonumber(ARGV[2]) then return 0 end
if not h[2] then
  redis.call('HSET', KEYS[3], 'draining', '1')
  changed(ARGV[1])
end
return 1
"""

# KEYS: w per worker. Per worker: rid ('' when none), epoch, registration JSON (or false).
REGISTRATIONS = """
local out = {}
for i = 1, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'rid', 'epoch', 'reg')
  out[#out + 1] = h[1] or ''
  out[#out + 1] = h[2]
  out[#out + 1] = h[3]
end
return out
"""

# KEYS: w. ARGV: now. The block count of a live worker, nil when it is not live.
LIVE = """
local h = redis.call('HMGET', KEYS[1], 'expires', 'nblocks')
if not h[1] or tonumber(h[1]) <= tonumber(ARGV[1]) then return nil end
return tonumber(h[2])
"""

# KEYS: seq, changes, w, used. ARGV: name, now (or '' to skip the lease check), bit,
# epoch (or '' for any), blocks... -1: not live; -2: at another epoch; 0: done.
SET_BLOCKS = CHANGED + """
local h = redis.call('HMGET', KEYS[3], 'expires', 'nblocks', 'safety', 'epoch')
if not h[1] then return -1 end
if ARGV[2] ~= '' and tonumber(h[1]) <= tonumber(ARGV[2]) then return -1 end
if ARGV[4] ~= '' and h[4] ~= ARGV[4] then return -2 end
local n = tonumber(h[2])
for i = 5, #ARGV do
  local b = tonumber(ARGV[i])
  if b >= 0 and b < n then redis.call('SETBIT', KEYS[4], b, tonumber(ARGV[3])) end
end
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('PEXPIRE', KEYS[4], h[3]) end
changed(ARGV[1])
return 0
"""

# KEYS: w, jobs. ARGV: now, job.
PUT_JOB = """
local h = redis.call('HMGET', KEYS[1], 'expires', 'safety')
if not h[1] or tonumber(h[1]) <= tonumber(ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], h[2])
return 1
"""

# A new pending transfer and its jobs, all or nothing. KEYS: t:PLAN, pending:SRC,
# pending:DST, deadlines, w:SRC, w:DST, then w, jobs per job. ARGV: now, plan id, token,
# record JSON, not_after, the plan's src and dst epochs, job JSON per job. -1: the plan
# id exists; -2x / -3x / -4x: side x (1 src, 2 dst) not live / at another epoch than the
# plan's (registered again since its blocks were taken) / draining; i > 0: job i's worker
# is not live; 0: stored and queued. The token is the caller's, the same on redis-py's
# retry: a retry of a call that did run (its answer lost to a timeout) finds its own
# token and succeeds, rather than calling its own transfer a conflict and freeing the
# blocks it uses.
START_TRANSFER = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'token') == ARGV[3] then return 0 end
  return -1
end
local now = tonumber(ARGV[1])
for side = 1, 2 do
  local h = redis.call('HMGET', KEYS[4 + side], 'expires', 'epoch', 'draining')
  if not h[1] or tonumber(h[1]) <= now then return -20 - side end
  if h[2] ~= ARGV[5 + side] then return -30 - side end
  if h[3] then return -40 - side end
end
local safety = {}
for i = 7, #KEYS, 2 do
  local h = redis.call('HMGET', KEYS[i], 'expires', 'safety')
  if not h[1] or tonumber(h[1]) <= now then return (i - 5) / 2 end
  safety[i] = h[2]
end
redis.call('HSET', KEYS[1], 'record', ARGV[4], 'version', 1, 'token', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[2])
for i = 7, #KEYS, 2 do
  redis.call('RPUSH', KEYS[i + 1], ARGV[7 + (i - 5) / 2])
  redis.call('PEXPIRE', KEYS[i + 1], safety[i])
end
return 0
"""

# A transfer record stored only if its version is still the caller's (compare and set).
# KEYS: t:PLAN, pending:SRC, pending:DST, deadlines. ARGV: expected version, record
# JSON, state, plan id, not_after, finished TTL ms, channel. -1: no such record; 0: the
# version moved on (nothing stored); else the new version.
REPLACE_TRANSFER = """
local version = redis.call('HGET', KEYS[1], 'version')
if not version then return -1 end
if tonumber(version) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[2])
local new = redis.call('HINCRBY', KEYS[1], 'version', 1)
if ARGV[3] == 'pending' then
  redis.call('SADD', KEYS[2], ARGV[4])
  redis.call('SADD', KEYS[3], ARGV[4])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[4])
  redis.call('PERSIST', KEYS[1])
else
  redis.call('SREM', KEYS[2], ARGV[4])
  redis.call('SREM', KEYS[3], ARGV[4])
  redis.call('ZREM', KEYS[4], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
redis.call('PUBLISH', ARGV[7], '1')
return new
"""

# KEYS: seq, changes, delayed, w, used. ARGV: member (JSON [name, blocks, nonce, epoch];
# the epoch, when present and not null, must still be the worker's).
TAKE_DELAYED = CHANGED + """
if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then return 0 end
local h = redis.call('HMGET', KEYS[4], 'nblocks', 'epoch')
local n = tonumber(h[1])
if not n then return 0 end
local member = cjson.decode(ARGV[1])
local epoch = member[4]
if epoch ~= nil and epoch ~= cjson.null and tonumber(h[2]) ~= epoch then return 0 end
for _, b in ipairs(member[2]) do
  if b >= 0 and b < n then redis.call('SETBIT', KEYS[5], b, 0) end
end
changed(member[1])
return 1
"""

# Load on several workers, all or nothing (amounts on one worker add up): every check,
# then every change. The load hashes are KEYS[k0 + 1 …]; item i's name, tokens and
# requests are ARGV[a0 + n(i - 1) + 1 …] (n = 3), followed by its promised blocks and
# context tokens when n = 5 (no capacity: promises are a price, not a limit; the context
# counts only where no blocks are promised, see CLOSE). {1, 0}: reserved; {0, i}: item
# i's worker is full; {-1, i}: it has no capacity.
RESERVE_ITEMS = """
local function reserve_items(k0, a0, n)
  local want = {}
  for i = k0 + 1, #KEYS do
    local j, w = a0 + n * (i - k0 - 1), want[KEYS[i]] or {0, 0}
    want[KEYS[i]] = {w[1] + tonumber(ARGV[j + 2]), w[2] + tonumber(ARGV[j + 3])}
  end
  for i = k0 + 1, #KEYS do
    local h = redis.call('HMGET', KEYS[i], 'tokens', 'requests', 'max_tokens', 'max_requests')
    if not h[3] then return {-1, i - k0} end
    local w = want[KEYS[i]]
    if tonumber(h[1]) + w[1] > tonumber(h[3]) or tonumber(h[2]) + w[2] > tonumber(h[4]) then
      return {0, i - k0}
    end
  end
  for i = k0 + 1, #KEYS do
    local j = a0 + n * (i - k0 - 1)
    redis.call('HINCRBY', KEYS[i], 'tokens', ARGV[j + 2])
    redis.call('HINCRBY', KEYS[i], 'requests', ARGV[j + 3])
    if n == 5 and tonumber(ARGV[j + 4]) > 0 then
      redis.call('HINCRBY', KEYS[i], 'blocks', ARGV[j + 4])
    elseif n == 5 and tonumber(ARGV[j + 5]) > 0 then
      redis.call('HINCRBY', KEYS[i], 'context', ARGV[j + 5])
    end
    changed(ARGV[j + 1])
  end
  return {1, 0}
end
"""

# KEYS: seq, changes, load per item. ARGV: name, tokens, requests per item.
RESERVE = CHANGED + RESERVE_ITEMS + """
return reserve_items(2, 0, 3)
"""

# Reservations. A reservation is the hash rsv:ID (owner, items as JSON [[worker, tokens,
# requests, promised blocks, context tokens], …], expires), a member of rsv-due (by
# expires) and of rsv-of:OWNER. An item's context counts in its worker's load while its
# promised blocks are 0 (from the start, or from when its KV landed).

# Load of a reservation, all or nothing, as RESERVE does, and the reservation itself.
# KEYS: seq, changes, rsv:ID, rsv-due, rsv-of:OWNER, then load per item.
# ARGV: id, owner, items JSON, expires, then name, tokens, requests, blocks, context per
# item.
# As RESERVE; {1, 0} also when the id is open already (a retry: nothing reserved again).
OPEN_RESERVATION = CHANGED + RESERVE_ITEMS + """
if redis.call('EXISTS', KEYS[3]) == 1 then return {1, 0} end
local done = reserve_items(5, 4, 5)
if done[1] == 1 then
  redis.call('HSET', KEYS[3], 'owner', ARGV[2], 'items', ARGV[3], 'expires', ARGV[4])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[1])
end
return done
"""

# Closing (part of) a reservation: give its items' load back and forget them. The load
# and owner keys are built from the prefix (not declared; one Redis, as SYNC).
CLOSE = CHANGED + """
-- context: counted context given back (negative: starts to count, the KV landed)
local function give_back(p, item, tokens, requests, blocks, context)
  local load = p .. 'load:' .. item[1]
  local l = redis.call('HMGET', load, 'tokens', 'requests', 'blocks', 'context')
  if l[1] then
    redis.call('HSET', load, 'tokens', math.max(0, tonumber(l[1]) - tokens),
               'requests', math.max(0, tonumber(l[2]) - requests),
               'blocks', math.max(0, tonumber(l[3] or '0') - blocks),
               'context', math.max(0, tonumber(l[4] or '0') - context))
    changed(item[1])
  end
end
local function close(p, id, only, landed)
  local key = p .. 'rsv:' .. id
  local h = redis.call('HMGET', key, 'owner', 'items', 'expires')
  if not h[1] then return nil end
  local released, rest = {}, {}
  for _, item in ipairs(cjson.decode(h[2])) do
    local blocks, context = tonumber(item[4] or 0), tonumber(item[5] or 0)
    if only == nil or only[item[1]] then
      give_back(p, item, item[2], item[3], blocks, blocks > 0 and 0 or context)
      released[#released + 1] = {item[1], item[2], item[3], blocks, context}
    else
      if landed and blocks > 0 then
        give_back(p, item, 0, 0, blocks, -context)
        released[#released + 1] = {item[1], 0, 0, blocks, 0}
      end
      rest[#rest + 1] = {item[1], item[2], item[3], landed and 0 or blocks, context}
    end
  end
  if #rest > 0 then
    redis.call('HSET', key, 'items', cjson.encode(rest))
  else
    redis.call('DEL', key)
    redis.call('ZREM', p .. 'rsv-due', id)
    redis.call('SREM', p .. 'rsv-of:' .. h[1], id)
  end
  return {id, h[1], h[3], cjson.encode(released)}
end
"""

# KEYS: seq, changes, rsv:ID. ARGV: prefix, id, now ('' closes unconditionally; else only
# a reservation due by then), workers JSON ('' for all), '1' when the KV landed (the
# promised blocks of the items kept are given back too).
# {} when not open (or not due); else {id, owner, expires, released items JSON}.
CLOSE_RESERVATION = CLOSE + """
if ARGV[3] ~= '' then
  local expires = redis.call('HGET', KEYS[3], 'expires')
  if not expires or tonumber(expires) > tonumber(ARGV[3]) then return {} end
end
local only = nil
if ARGV[4] ~= '' then
  only = {}
  for _, w in ipairs(cjson.decode(ARGV[4])) do only[w] = true end
end
return close(ARGV[1], ARGV[2], only, ARGV[5] == '1') or {}
"""

# An owner whose lease lapsed: every reservation it holds. KEYS: seq, changes, owners,
# rsv-of:OWNER. ARGV: prefix, owner, now. Per closed reservation the four fields of
# CLOSE_RESERVATION's answer, flat; {} when the owner's lease did not lapse.
CLOSE_OWNER = CLOSE + """
local deadline = redis.call('ZSCORE', KEYS[3], ARGV[2])
if not deadline or tonumber(deadline) > tonumber(ARGV[3]) then return {} end
redis.call('ZREM', KEYS[3], ARGV[2])
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local got = close(ARGV[1], id, nil, false)
  if got then
    for _, field in ipairs(got) do out[#out + 1] = field end
  end
end
redis.call('DEL', KEYS[4])
return out
"""

# KEYS: rsv:ID, rsv-due. ARGV: id, expires. {owner, items JSON} or {} when not open.
RENEW_RESERVATION = """
local h = redis.call('HMGET', KEYS[1], 'owner', 'items')
if not h[1] then return {} end
redis.call('HSET', KEYS[1], 'expires', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return h
"""

# KEYS: seq, changes, load. ARGV: name, tokens, requests.
RELEASE_LOAD = CHANGED + """
local h = redis.call('HMGET', KEYS[3], 'tokens', 'requests')
if not h[1] then return 0 end
redis.call('HSET', KEYS[3], 'tokens', math.max(0, tonumber(h[1]) - tonumber(ARGV[2])),
           'requests', math.max(0, tonumber(h[2]) - tonumber(ARGV[3])))
changed(ARGV[1])
return 1
"""

# KEYS: seq, changes, load, loads. ARGV: name, max_tokens, max_requests.
SET_CAPACITY = CHANGED + """
redis.call('HSET', KEYS[3], 'max_tokens', ARGV[2], 'max_requests', ARGV[3])
redis.call('HSETNX', KEYS[3], 'tokens', 0)
redis.call('HSETNX', KEYS[3], 'requests', 0)
redis.call('SADD', KEYS[4], ARGV[1])
changed(ARGV[1])
"""

# KEYS: seq, changes, load, loads. ARGV: name. 1 when the worker had a capacity.
DROP_LOAD = CHANGED + """
local gone = redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
if gone > 0 then changed(ARGV[1]) end
return gone
"""

#: Fields of one worker in a :data:`SYNC` answer, in order.
SYNC_FIELDS = ("name", "rid", "epoch", "ttl", "expires", "nblocks", "used", "tokens",
               "requests", "max_tokens", "max_requests", "blocks", "draining", "context")

# What changed since the caller's view: {view id, seq, full (1/0), then per worker the
# SYNC_FIELDS (false where its hash is gone)}. Everything (every registered worker and
# every worker with a capacity) when the caller's view is of another dataset or server
# run, predates the trimmed part of the change log, or the caller asks for it. The view
# id is a random id kept in Redis (gone after a flush or a restart without persistence)
# joined to the server's run_id: a restart or a failover may have lost the last writes,
# so seq may have gone back and grown again past the caller's view.
# KEYS: seq, changes, view id, floor, workers, loads.
# ARGV: key prefix, caller's view id ('' for everything), caller's seq, a fresh view id.
SYNC = """
local id = redis.call('GET', KEYS[3])
if not id then
  id = ARGV[4]
  redis.call('SET', KEYS[3], id)
end
-- INFO after the one write: servers before Redis 5 refuse writes after it.
id = id .. ':' .. string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local last = tonumber(ARGV[3])
local full = id ~= ARGV[2] or last > seq or last < tonumber(redis.call('GET', KEYS[4]) or '0')
local names
if full then
  names = redis.call('ZRANGE', KEYS[5], 0, -1)
  local seen = {}
  for _, name in ipairs(names) do seen[name] = true end
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[6])) do
    if not seen[name] then names[#names + 1] = name end
  end
else
  names = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[3], '+inf')
end
local out = {id, seq, full and 1 or 0}
local p = ARGV[1]
for _, name in ipairs(names) do
  local h = redis.call('HMGET', p .. 'w:' .. name, 'rid', 'epoch', 'ttl', 'expires', 'nblocks',
                       'draining')
  local used = false
  if h[2] then used = redis.call('BITCOUNT', p .. 'used:' .. name) end
  local l = redis.call('HMGET', p .. 'load:' .. name, 'tokens', 'requests', 'max_tokens',
                       'max_requests', 'blocks', 'context')
  out[#out + 1] = name
  for i = 1, 5 do out[#out + 1] = h[i] end
  out[#out + 1] = used
  for i = 1, 5 do out[#out + 1] = l[i] end
  out[#out + 1] = h[6]
  out[#out + 1] = l[6]
end
return out
"""

# Forget change-log entries older than seq - ARGV[1]; a view older than that reads
# everything (the floor). KEYS: seq, changes, floor. ARGV: lag.
TRIM = """
local cutoff = tonumber(redis.call('GET', KEYS[1]) or '0') - tonumber(ARGV[1])
if cutoff <= 0 or redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff) == 0 then
  return 0
end
if cutoff > tonumber(redis.call('GET', KEYS[3]) or '0') then
  redis.call('SET', KEYS[3], cutoff)
end
return 1
"""

#: Every script by the name the store runs it under.
SCRIPTS = {"register": REGISTER, "heartbeat": HEARTBEAT, "remove": REMOVE, "take": TAKE,
           "drain": DRAIN, "registrations": REGISTRATIONS, "live": LIVE, "set_blocks": SET_BLOCKS,
           "put_job": PUT_JOB, "start_transfer": START_TRANSFER,
           "take_delayed": TAKE_DELAYED, "reserve": RESERVE, "release_load": RELEASE_LOAD,
           "set_capacity": SET_CAPACITY, "drop_load": DROP_LOAD, "sync": SYNC, "trim": TRIM,
           "open_reservation": OPEN_RESERVATION, "close_reservation": CLOSE_RESERVATION,
           "close_owner": CLOSE_OWNER, "renew_reservation": RENEW_RESERVATION,
           "replace_transfer": REPLACE_TRANSFER}
