-- wrk script for bench.ab's paced rounds: wrk_post.lua's request and summary, each
-- connection waiting DELAY_MS before sending its next request, so that the load is a
-- steady rate below what the stack can take (connections × 1000 / (DELAY_MS + latency)).
local post = os.getenv("WRK_POST_SCRIPT")
dofile(post)
local pause = tonumber(os.getenv("DELAY_MS") or "10")

delay = function()
  return pause
end
