-- POST /livekit/webhook with pre-signed, distinct events read from a file of
-- "<authorization>\t<body>" lines (wrk's Lua cannot sign them itself).
local lines = {}
local next_line = 0

init = function(args)
  for line in io.lines(args[1]) do
    lines[#lines + 1] = line
  end
end

request = function()
  next_line = next_line % #lines + 1
  local line = lines[next_line]
  local tab = line:find("\t", 1, true)
  return wrk.format("POST", "/livekit/webhook", {
    ["Content-Type"] = "application/webhook+json",
    ["Authorization"] = line:sub(1, tab - 1),
  }, line:sub(tab + 1))
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"p50_ms":%.3f,"p99_ms":%.3f,"errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    errors.connect + errors.read + errors.write + errors.timeout, errors.status))
end
