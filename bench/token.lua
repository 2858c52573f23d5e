-- POST /token with the OpenVidu tutorial body.
dofile(debug.getinfo(1, "S").source:match("@(.*/)") .. "report.lua")

wrk.method = "POST"
wrk.body = '{"roomName":"bench-room","participantName":"alice"}'
wrk.headers["Content-Type"] = "application/json"
