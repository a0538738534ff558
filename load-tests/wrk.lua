-- wrk script for bench.py. WRK_MODE=healthz: GET /healthz (the no-op ceiling); hold, checkout or join: see below. Otherwise POST /purchase, one
-- unit, a different buyer on every request (so the per-buyer limit never applies) unless WRK_USER fixes one buyer
-- (the rate-limited benchmark). Each wrk thread takes its own range of user ids. done() prints one JSON line.
local counter = 0
thread_base = 0  -- a global: setup() sets it in each thread
local threads = 0

function setup(thread)
  thread:set("thread_base", threads * 10000000)
  threads = threads + 1
end

function init(args)
  thread_base = tonumber(thread_base) or 0
end

local fixed_user = os.getenv("WRK_USER")
local product = os.getenv("WRK_PRODUCT") or "1"

local mode = os.getenv("WRK_MODE") or "purchase"
local healthz = mode == "healthz"
-- WRK_MODE=hold: POST /checkouts instead of /purchase. WRK_MODE=checkout: a hold, then its confirm, each checkout
-- id taken from a hold's answer (response() below) and confirmed by the thread's next request.
local path = (mode == "hold" or mode == "checkout") and "/checkouts" or "/purchase"
-- WRK_MODE=join: POST /products/{WRK_PRODUCT}/queue, a new buyer joining the product's waiting room each time.
if mode == "join" then path = "/products/" .. product .. "/queue" end
local to_confirm = {}
-- WRK_TOKENS: a file of buyers' bearer tokens, one a line (HC_BUYER_AUTH=jwt): each request takes the next one and
-- leaves user_id out of its body (the token names the buyer).
local tokens = {}
local tokens_file = os.getenv("WRK_TOKENS")
if tokens_file then
  for line in io.lines(tokens_file) do table.insert(tokens, line) end
end

function request()
  if healthz then
    return wrk.format("GET", "/healthz")
  end
  if #to_confirm > 0 then
    return wrk.format("POST", "/checkouts/" .. table.remove(to_confirm) .. "/confirm")
  end
  counter = counter + 1
  if #tokens > 0 then
    local token = tokens[(thread_base / 10000000 * 7919 + counter) % #tokens + 1]
    return wrk.format("POST", path, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token},
                      '{"product_id": ' .. product .. ', "quantity": 1}')
  end
  local user = fixed_user or tostring(thread_base + counter)
  if mode == "join" then
    return wrk.format("POST", path, {["Content-Type"] = "application/json"}, '{"user_id": ' .. user .. '}')
  end
  local body = '{"user_id": ' .. user .. ', "product_id": ' .. product .. ', "quantity": 1}'
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end

if mode == "checkout" then
  function response(status, headers, body)
    if status == 201 then
      local id = string.match(body, '"checkout_id":"([%w_%-]+)"')
      if id then table.insert(to_confirm, id) end
    end
  end
end

function done(summary, latency, requests)
  io.write("WRK_JSON {")
  -- Answers other than 2xx/3xx are "status errors" to wrk: 409 and 429 are counted there.
  local e = summary.errors
  io.write(string.format('"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout))
  io.write(string.format('"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d',
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
  io.write("}\n")
end

-- WRK_DELAY_MS: each connection waits this long before its next request (the paced latency run).
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "")
if delay_ms then
  function delay()
    return delay_ms
  end
end
