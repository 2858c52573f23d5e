-- POST /livekit/webhook with pre-signed, distinct events read from a file of
-- "<authorization>\t<body>" lines (wrk's Lua cannot sign them itself).
dofile(debug.getinfo(1, "S").source:match("@(.*/)") .. "report.lua")
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
