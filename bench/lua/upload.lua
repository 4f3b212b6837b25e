-- wrk: every request is a multipart/form-data POST of one file as the part "files".
-- Usage: wrk -s upload.lua URL -- FILE NAME [API_KEY]
-- The request never changes: wrk formats it once, after init(), and resends the same bytes.
function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  local boundary = "----clustr-bench-boundary-5e1d09a7c4"
  wrk.method = "POST"
  if args[3] then
    wrk.headers["Authorization"] = "Bearer " .. args[3]
  end
  wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
  wrk.body = "--" .. boundary .. "\r\n"
    .. 'Content-Disposition: form-data; name="files"; filename="' .. args[2] .. '"\r\n'
    .. "Content-Type: image/jpeg\r\n\r\n"
    .. data .. "\r\n--" .. boundary .. "--\r\n"
end
