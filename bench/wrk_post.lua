-- wrk script for the benchmark harness: one JSON POST, a JSON summary at the end.
-- Environment: BODY (the request body), TOKEN (optional bearer token).
wrk.method = "POST"
wrk.body = os.getenv("BODY") or '{"prompt":"hello","n":2}'
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nRESULT {"requests":%d,"duration_us":%d,"socket_errors":%d,"non_2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
