-- e2e_body.lua: wrk request generator for bench/e2e_log.sh: the same POST with a body of a
-- fixed size and one API key in the X-ApiKey header, on every request.
--
-- Arguments (after wrk's "--"): KEY BODY_BYTES
--   POST PATH (the path of wrk's URL), "X-ApiKey: KEY",
--   "Content-Type: application/octet-stream" (not form or JSON, so the key is never searched
--   for in the body), "Content-Length: BODY_BYTES", and BODY_BYTES printable ASCII bytes
--   (a repeating line of text, so a captured body needs no escaping beyond its newlines).
-- The request is built once in init(); request() returns the same string every time.
--
-- e2e_log.sh prepends its done() hook to this file; wrk loads the concatenation with -s.

local kBodyBytesMax = 16 * 1024 * 1024

local the_request

function init(args)
  local key = args[1]
  local body_bytes = tonumber(args[2] or "4096")
  assert(key and #key > 0, "KEY is required")
  assert(body_bytes and body_bytes >= 0 and body_bytes <= kBodyBytesMax,
    "BODY_BYTES must be in 0..16777216")
  local line = "The quick brown fox jumps over the lazy dog 0123456789.\n"
  local body = string.rep(line, math.floor(body_bytes / #line) + 1):sub(1, body_bytes)
  the_request = "POST " .. wrk.path .. " HTTP/1.1\r\n" ..
    "Host: " .. wrk.headers["Host"] .. "\r\n" ..
    "X-ApiKey: " .. key .. "\r\n" ..
    "Content-Type: application/octet-stream\r\n" ..
    "Content-Length: " .. body_bytes .. "\r\n\r\n" .. body
end

function request()
  return the_request
end
