-- Shared by the wrk scripts: numbers each wrk thread (thread_id, from 0) and
-- prints one JSON line for the benchmark scripts when the run is done:
-- requests per second, non-2xx answers and socket errors, and latency
-- percentiles in milliseconds.
local threads = 0

function setup(thread)
    thread:set("thread_id", threads)
    threads = threads + 1
end

function init(args)
    thread_id = tonumber(thread_id) or 0
    if start then
        start()
    end
end

function done(summary, latency, requests)
    local errors = summary.errors.connect + summary.errors.read + summary.errors.write
        + summary.errors.timeout + summary.errors.status
    io.write(string.format(
        '{"ops_per_second":%.1f,"errors":%d,"p50_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f}\n',
        summary.requests / (summary.duration / 1e6), errors,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000,
        latency:percentile(99.9) / 1000))
end
