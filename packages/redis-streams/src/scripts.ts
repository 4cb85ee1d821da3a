/**
 * The Lua scripts that make each settle a single atomic step on the server. Every script touches
 * keys of one topic only (one hash tag), so they run unchanged on Redis Cluster.
 *
 * No script reads, adds or bumps a header: `RETRY`, `MOVE`, `DEAD_LETTER` and `REPLAY` write
 * exactly the entry fields they are given (the `wire.ts` layout of the headers core built).
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { BODY_FIELD, HEADERS_FIELD } from './wire.js';

/** A Lua script run by `EVALSHA`, falling back to `EVAL` when the server does not know it yet. */
export class Script {
  readonly sha: string;
  constructor(readonly lua: string) {
    this.sha = createHash('sha1').update(lua).digest('hex');
  }

  /** Runs the script; replies keep Redis's types (strings), bulk strings as `Buffer` with `buffers`. */
  async run(client: Redis, keys: readonly string[], args: readonly (string | Buffer | number)[], buffers = false): Promise<unknown> {
    const call = (cmd: string, first: string) =>
      buffers ? client.callBuffer(cmd, first, keys.length, ...keys, ...args) : client.call(cmd, first, keys.length, ...keys, ...args);
    try {
      return await call('EVALSHA', this.sha);
    } catch (error) {
      if (error instanceof Error && error.message.startsWith('NOSCRIPT')) return call('EVAL', this.lua);
      throw error;
    }
  }
}

/**
 * APPEND: append several messages to stream KEYS[1]; ARGV headers JSON, body, headers JSON, body…
 * (the two-field layout of `wire.ts`). One command for a batch instead of one `XADD` each: most of
 * a publish's client CPU is ioredis's work per command. Returns one reply per message, in order: the
 * entry id, or the error of its `XADD` (`redis.pcall`: one failure does not stop the others).
 */
export const APPEND = new Script(`
local out = {}
for i = 1, #ARGV, 2 do
  out[#out + 1] = redis.pcall('XADD', KEYS[1], '*', '${HEADERS_FIELD}', ARGV[i], '${BODY_FIELD}', ARGV[i + 1])
end
return out
`);

const NOW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

/** True when entry ARGV[2] of stream KEYS[1] is pending for group ARGV[1] and consumer ARGV[3]. */
const OWNED = `
local function owned(stream, group, id, consumer)
  return #redis.call('XPENDING', stream, group, id, id, 1, consumer) > 0
end
`;

/**
 * ACK_DELETE: acknowledge entries of the group's own retry stream and delete them, atomically.
 * KEYS[1] retry stream; ARGV group, ids… Returns how many were acknowledged. (Entries of the event
 * stream are acknowledged with a plain `XACK <stream> <group> <ids…>`: other groups still read them.)
 */
export const ACK_DELETE = new Script(`
local n = 0
for i = 2, #ARGV do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
`);

/**
 * RETRY: acknowledge the original and park a copy in the group's delayed set, atomically.
 * KEYS[1] source stream, KEYS[2] delayed zset; ARGV group, id, consumer, delayMs, deleteEntry,
 * nonce, fields… Returns 0 (and changes nothing) when this consumer no longer owns the entry.
 */
export const RETRY = new Script(`${OWNED}${NOW}
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[5] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), cmsgpack.pack(ARGV[6], fields))
return 1
`);

/**
 * MOVE: append the due members of the delayed set to the group's retry stream, atomically.
 * KEYS[1] delayed zset, KEYS[2] retry stream; ARGV max. Returns {moved, ms until the next due
 * member or -1}.
 */
export const MOVE = new Script(`${NOW}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local _, fields = cmsgpack.unpack(member)
  redis.call('XADD', KEYS[2], '*', unpack(fields))
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
return {#due, wait}
`);

/**
 * DEAD_LETTER: append to the group's dead-letter stream and acknowledge the original, atomically.
 * KEYS[1] source stream, KEYS[2] dlq; ARGV group, id, consumer, deleteEntry, fields… Returns the
 * dead letter's id, or false when this consumer no longer owns the entry.
 */
export const DEAD_LETTER = new Script(`${OWNED}
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return false end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
return id
`);

/**
 * CLAIM_OWN: reset the idle time (and optionally the delivery count) of an entry this consumer
 * owns. KEYS[1] stream; ARGV group, id, consumer, idleMs, retryCount ('' to keep). Returns 1, or 0
 * when the entry is no longer this consumer's.
 */
export const CLAIM_OWN = new Script(`${OWNED}
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
if ARGV[5] == '' then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[4], 'JUSTID')
else
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[4], 'RETRYCOUNT', ARGV[5], 'JUSTID')
end
return 1
`);

/**
 * REPLAY: move one dead letter to the group's retry stream, atomically. KEYS[1] dlq, KEYS[2] retry
 * stream; ARGV dead-letter id, fields… Returns the new entry id, or false if the dead letter is gone.
 */
export const REPLAY = new Script(`
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return false end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
`);

/**
 * DROP_CONSUMER: delete consumer ARGV[2] of group ARGV[1] on stream KEYS[1] if it holds nothing
 * pending (XGROUP DELCONSUMER would drop its pending entries). Returns 1 if deleted.
 */
export const DROP_CONSUMER = new Script(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
`);

/**
 * TRIM_ACKED: XTRIM MINID below the oldest entry any group of stream KEYS[1] has still to read
 * (after its last-delivered-id) or to acknowledge (its oldest pending id). No groups → no trim.
 * Returns the number of entries removed.
 */
export const TRIM_ACKED = new Script(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq), ms
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local min = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local _, seq, ms = parse(info['last-delivered-id'])
  local cand = ms .. '-' .. string.format('%.0f', seq + 1)
  if tonumber(info['pending']) > 0 then
    local p = redis.call('XPENDING', KEYS[1], info['name'])
    if p[2] and less(p[2], cand) then cand = p[2] end
  end
  if min == nil or less(cand, min) then min = cand end
end
return redis.call('XTRIM', KEYS[1], 'MINID', min)
`);
