-- One GCRA rate-limit decision for one key, atomically: Redis runs a script alone, so
-- concurrent callers on any number of nodes can never read the same state and both pass.
--
-- KEYS[1]  the key (keel:rl:<policy>:<key>); its value is the theoretical arrival time
--          (TAT) in microseconds of the Redis server's clock.
-- ARGV[1]  emission interval in microseconds (period / limit): the cost of one request.
-- ARGV[2]  burst: how many requests may pass at once from a full allowance.
--
-- Returns {allowed (1 or 0), remaining, reset_after_us, retry_after_us}.
--
-- Time comes from the server (TIME), never from the caller, so nodes whose clocks disagree
-- still share one timeline.

if redis.replicate_commands then
  -- Redis < 5 refuses writes after a non-deterministic command unless the script's effects
  -- (not the script) are replicated; later versions do that always.
  pcall(redis.replicate_commands)
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
-- How far ahead of now the TAT may run while a request still conforms.
local tolerance = interval * (burst - 1)

local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end

local allow_at = tat - tolerance
if now < allow_at then
  -- Refused: the state is left as it is, so refused requests cost nothing.
  return {0, 0, tat - now, allow_at - now}
end

local new_tat = tat + interval
-- The key lives exactly as long as it differs from a fresh one, so idle keys vanish.
local ttl_ms = math.ceil((new_tat - now) / 1000)
-- %.0f: tostring would print a 16-digit microsecond count in exponent form and lose digits.
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
local remaining = math.floor((burst * interval - (new_tat - now)) / interval)
return {1, remaining, new_tat - now, 0}
