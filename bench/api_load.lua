-- Mixed API load for wrk: 40% run details, 40% run lists, 20% run creates; with
-- GREENROOM_BENCH_CREATES=0, reads only (half details, half lists).
-- The key and the run ids to read come from the environment (bench/api_load.py sets them).
local key = os.getenv("GREENROOM_BENCH_KEY")
local creates = tonumber(os.getenv("GREENROOM_BENCH_CREATES") or "0.2")
local ids = {}
for id in string.gmatch(os.getenv("GREENROOM_BENCH_RUNS"), "[^,]+") do
  ids[#ids + 1] = id
end
local create = '{"workflow":"demo.sync_users","input":{"org":"acme"}}'
local threads = {}
local next_thread = 1

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(tid * 7919)
end

function request()
  local headers = { ["Authorization"] = "Bearer " .. key }
  local r = math.random()
  if r < creates then
    headers["Content-Type"] = "application/json"
    return wrk.format("POST", "/v1/runs", headers, create)
  elseif r < creates + (1 - creates) / 2 then
    return wrk.format("GET", "/v1/runs/" .. ids[math.random(#ids)], headers)
  end
  return wrk.format("GET", "/v1/runs?limit=20", headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
