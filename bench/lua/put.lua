-- wrk: every request PUTs the same file to a fresh name under /put/ (nginx's dav module).
-- Usage: wrk -s put.lua URL -- FILE TAG
local threads = 0
local body, tag
local sent = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  body = f:read("*a")
  f:close()
  tag = args[2]
end

function request()
  sent = sent + 1
  return wrk.format("PUT", "/put/" .. tag .. "-" .. thread_id .. "-" .. sent .. ".jpg", nil, body)
end
