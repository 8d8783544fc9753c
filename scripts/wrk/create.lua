-- wrk: durable creates. Every request is a PUT of a fresh id with
-- If-None-Match: * (each wrk thread numbers its own ids), ~256-byte body.
local counter = 0
local threads = 0

function setup(thread)
    thread:set("thread_id", threads)
    threads = threads + 1
end

function init(args)
    thread_id = tonumber(thread_id) or 0
end

local body = '{"n":1,"pad":"' .. string.rep("x", 230) .. '"}'

function request()
    counter = counter + 1
    local path = string.format("/v1/wrk/t%d-%d", thread_id, counter)
    return wrk.format("PUT", path,
        { ["Content-Type"] = "application/json", ["If-None-Match"] = "*" }, body)
end

-- One JSON line for the benchmark scripts: requests per second, non-2xx
-- answers and socket errors, and latency percentiles in milliseconds.
function done(summary, latency, requests)
    local errors = summary.errors.connect + summary.errors.read + summary.errors.write
        + summary.errors.timeout + summary.errors.status
    io.write(string.format(
        '{"ops_per_second":%.1f,"errors":%d,"p50_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f}\n',
        summary.requests / (summary.duration / 1e6), errors,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000,
        latency:percentile(99.9) / 1000))
end
