-- e2e_auth.lua: wrk request generator for `bench/e2e.sh --auth`.
--
-- Every request carries a different API key, cycling through all of PREFIX00000000 ..
-- PREFIX<COUNT-1, 8 digits> (the values keygate-seed creates) in a scattered order: the index
-- advances by a prime stride, so COUNT consecutive requests send each key exactly once as long
-- as COUNT is not a multiple of the stride. Each wrk thread has its own Lua state and counter.
--
-- Arguments (after wrk's "--"): CARRIER COUNT PREFIX
--   header   GET PATH with "X-ApiKey: KEY"
--   query    GET PATH?key=KEY
--   form     POST PATH, application/x-www-form-urlencoded body "key=KEY"
--   json     POST PATH, application/json body {"API_Key":"KEY"}
--   json4k   POST PATH, application/json body of exactly 4096 bytes whose last root member is
--            "API_Key" (the members before it are filler that the extractor must skip)
-- PATH is the path of wrk's URL. The request is one string.format of a template built once in
-- init(): the key has a fixed width, so Content-Length is fixed too.
--
-- e2e.sh prepends its done() hook to this file; wrk loads the concatenation with -s.

local kStride = 7919  -- prime
local kJson4kBodyBytes = 4096

local template
local count
local index = 0

-- Makes s safe as literal text in a string.format template.
local function literal(s)
  return (s:gsub("%%", "%%%%"))
end

-- Root members of a made-up order record, then a padding member, totalling `bytes` bytes
-- including the braces and the trailing `last` member (which is a template: its width after
-- formatting is `last_bytes`).
local function json_filler_object(bytes, last, last_bytes)
  local members = {}
  local size = 2 + last_bytes  -- "{" .. members .. "," .. last .. "}" minus the commas
  local i = 0
  while true do
    local member
    if i % 4 == 3 then
      member = string.format('"item_%03d":{"sku":"SKU-%06d","qty":%d,"tags":["a","b"]}',
        i, i * 37, i % 9 + 1)
    elseif i % 4 == 1 then
      member = string.format('"amount_%03d":%d.%02d', i, i * 131, i % 100)
    else
      member = string.format('"note_%03d":"%s"', i, string.rep(string.char(97 + i % 26), 40))
    end
    if size + #member + 1 + 64 > bytes then break end  -- keep room for the padding member
    members[#members + 1] = member
    size = size + #member + 1
    i = i + 1
  end
  local pad_overhead = #'"padding":""' + 1
  members[#members + 1] = '"padding":"' .. string.rep("x", bytes - size - pad_overhead) .. '"'
  return literal("{" .. table.concat(members, ",") .. ",") .. last .. "}"
end

function init(args)
  local carrier = args[1] or "header"
  count = tonumber(args[2] or "100000")
  local prefix = args[3] or "bk-"
  assert(count and count >= 1 and count <= 100000000, "COUNT must be in 1..100000000")
  local key = literal(prefix) .. "%08d"
  local path = literal(wrk.path)
  local host = "Host: " .. literal(wrk.headers["Host"]) .. "\r\n"

  local body, content_type
  if carrier == "header" then
    template = "GET " .. path .. " HTTP/1.1\r\n" .. host .. "X-ApiKey: " .. key .. "\r\n\r\n"
  elseif carrier == "query" then
    local sep = wrk.path:find("?", 1, true) and "&" or "?"
    template = "GET " .. path .. sep .. "key=" .. key .. " HTTP/1.1\r\n" .. host .. "\r\n"
  elseif carrier == "form" then
    content_type, body = "application/x-www-form-urlencoded", "key=" .. key
  elseif carrier == "json" then
    content_type, body = "application/json", '{"API_Key":"' .. key .. '"}'
  elseif carrier == "json4k" then
    local last = '"API_Key":"' .. key .. '"'
    content_type = "application/json"
    body = json_filler_object(kJson4kBodyBytes, last, #string.format(last, 0))
  else
    error("unknown carrier '" .. carrier .. "': header, query, form, json or json4k")
  end
  if body then
    local body_bytes = #string.format(body, 0)
    template = "POST " .. path .. " HTTP/1.1\r\n" .. host ..
      "Content-Type: " .. content_type .. "\r\n" ..
      "Content-Length: " .. body_bytes .. "\r\n\r\n" .. body
  end
  assert(#string.format(template, count - 1) == #string.format(template, 0),
    "keys must all have the same width")
end

function request()
  index = (index + kStride) % count
  return string.format(template, index)
end
