-- wrk: durable conditional replaces of existing documents. Every request is a
-- PUT with If-Match: * (the document must exist) of one of 256 documents
-- made beforehand (/v1/wrk/u0 .. u255), taken in turn, ~256-byte body that
-- differs from the stored one (an equal body would be answered without a write).
local counter = 0
local threads = 0

function setup(thread)
    thread:set("thread_id", threads)
    threads = threads + 1
end

function init(args)
    thread_id = tonumber(thread_id) or 0
    counter = thread_id * 128
end

local pad = string.rep("y", 220)

function request()
    counter = counter + 1
    local path = string.format("/v1/wrk/u%d", counter % 256)
    local body = string.format('{"n":%d,"t":%d,"pad":"%s"}', counter, thread_id, pad)
    return wrk.format("PUT", path,
        { ["Content-Type"] = "application/json", ["If-Match"] = "*" }, body)
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
