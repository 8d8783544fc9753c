-- wrk: durable conditional replaces of existing documents. Every request is a
-- PUT with If-Match: * (the document must exist) of one of 256 documents
-- made beforehand (/v1/wrk/u0 .. u255), taken in turn, ~256-byte body that
-- differs from the stored one (an equal body would be answered without a write).
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

local counter = 0
local pad = string.rep("y", 220)

-- Called by common.lua's init: each thread starts at its own place in the turn.
function start()
    counter = thread_id * 128
end

function request()
    counter = counter + 1
    local path = string.format("/v1/wrk/u%d", counter % 256)
    local body = string.format('{"n":%d,"t":%d,"pad":"%s"}', counter, thread_id, pad)
    return wrk.format("PUT", path,
        { ["Content-Type"] = "application/json", ["If-Match"] = "*" }, body)
end
