-- wrk: durable creates. Every request is a PUT of a fresh id with
-- If-None-Match: * (each wrk thread numbers its own ids), ~256-byte body.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

local counter = 0
local body = '{"n":1,"pad":"' .. string.rep("x", 230) .. '"}'

function request()
    counter = counter + 1
    local path = string.format("/v1/wrk/t%d-%d", thread_id, counter)
    return wrk.format("PUT", path,
        { ["Content-Type"] = "application/json", ["If-None-Match"] = "*" }, body)
end
