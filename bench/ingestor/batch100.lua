-- 100 readings per request: 10 messages of 10 metrics, each with an epoch-ms ts.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("VT_BENCH_TOKEN") or "vtd_bench")

local now_ms = os.time() * 1000
local messages = {}
for m = 0, 9 do
  local values = {}
  for i = 0, 9 do
    values[#values + 1] = string.format('"sensor_%d":%d.%d', i, 20 + m, i)
  end
  messages[#messages + 1] = string.format('{"ts":%d,"values":{%s}}', now_ms - m * 1000, table.concat(values, ","))
end
wrk.body = "[" .. table.concat(messages, ",") .. "]"
