-- make_corpus.lua -- writes the seed corpora of the fuzz harnesses.
--
--   lua5.4 fuzz/make_corpus.lua [OUTDIR]        (default fuzz/corpus)
--
-- Deterministic: the same files every time.  Each harness directory is
-- emptied first.  The input layouts are described at the top of
-- fuzz/fuzz_segment.c, fuzz/fuzz_index.c and fuzz/fuzz_manifest.c.

local out = arg[1] or "fuzz/corpus"

-- ------------------------------------------------------------ CRC32C

local crc_table = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if c & 1 == 1 then c = (c >> 1) ~ 0x82F63B78 else c = c >> 1 end
  end
  crc_table[i] = c
end

local function crc32c(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do
    c = crc_table[(c ~ s:byte(i)) & 0xFF] ~ (c >> 8)
  end
  return c ~ 0xFFFFFFFF
end
assert(crc32c("123456789") == 0xE3069283)

-- ------------------------------------------------------------ files

local function write(dir, name, data)
  local f = assert(io.open(out .. "/" .. dir .. "/" .. name, "wb"))
  f:write(data)
  f:close()
end

local function reset(dir)
  os.execute("mkdir -p '" .. out .. "/" .. dir .. "'")
  os.execute("rm -f '" .. out .. "/" .. dir .. "'/*")
end

-- A little deterministic randomness (LCG) for garbage bytes.
local seed = 12345
local function garbage(n)
  local t = {}
  for i = 1, n do
    seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
    t[i] = string.char((seed >> 16) & 0xFF)
  end
  return table.concat(t)
end

-- ------------------------------------------------------------ records

-- One framed record (docs/FORMAT.md).  key == nil: absent.
local function record(offset, ts, key, value, opts)
  opts = opts or {}
  local attrs = key and 1 or 0
  key = key or ""
  local body = string.pack("<BBi8i8I4I4", opts.magic or 1, opts.attrs or attrs, offset, ts,
                           opts.klen or #key, #value) .. key .. value
  local length = opts.length or (30 + #key + #value)
  local crc = opts.crc or crc32c(body)
  return string.pack("<I4I4", length, crc) .. body
end

-- n records from offset base; returns the bytes and a list of {pos, size, ts}.
local function records(base, n, style)
  local parts, info, pos = {}, {}, 0
  for i = 0, n - 1 do
    local ts = 1700000000000 + 10 * i
    if style == "backwards" and i % 3 == 2 then ts = ts - 100 end
    if style == "extreme" then
      local ex = { math.mininteger, -1, 0, math.maxinteger, 5, 5, 4 }
      ts = ex[i % #ex + 1]
    end
    local key
    if i % 3 == 1 then key = "key" .. i elseif i % 3 == 2 then key = "" end
    local value = string.rep(string.char(97 + i % 26), (i * 13) % 50)
    local r = record(base + i, ts, key, value)
    parts[#parts + 1] = r
    info[#info + 1] = { pos = pos, size = #r, ts = ts }
    pos = pos + #r
  end
  return table.concat(parts), info
end

-- Index files a writer would have written for info (fuzz_segment.c's
-- derive_index); sealed_next adds the seal trailer.
local function index_files(info, interval, sealed_next, log)
  local idx, tim, since, mx, at = {}, {}, 0, math.mininteger, {}
  for i, r in ipairs(info) do
    local due = since >= interval
    if r.ts > mx then mx = r.ts end
    if due then
      since = 0
      at[#at + 1] = i
      local e = string.pack("<I4I4", i - 1, r.pos)
      idx[#idx + 1] = e .. string.pack("<I4", crc32c(e))
      local t = string.pack("<i8I4", mx, i - 1)
      tim[#tim + 1] = t .. string.pack("<I4", crc32c(t))
    end
    since = since + r.size
  end
  if sealed_next then
    local t = string.pack("<i8I4I4I4", mx, (sealed_next - 1) & 0xFFFFFFFF, #log, crc32c(log))
    tim[#tim + 1] = t .. string.pack("<I4", crc32c(t))
  end
  return table.concat(idx), table.concat(tim), at
end

-- ------------------------------------------------------------ fuzz_segment

local function chunk(s) s = s or ""; assert(#s < 65536); return string.pack("<I2", #s) .. s end

-- flags: two, amode, smode, fixcrc, fixoff, shared; iv: open, derive interval indexes
local function seg_input(o)
  local flags = (o.two and 1 or 0) | ((o.amode or 0) << 1) | ((o.smode or 0) << 3) |
                (o.fixcrc and 0x20 or 0) | (o.fixoff and 0x40 or 0) | (o.shared and 0x80 or 0)
  local iv = (o.open_iv or 4) | ((o.derive_iv or 4) << 4)
  return string.pack("<BBBi8", flags, iv, o.keep or 0, o.n or 0) ..
         chunk(o.log0) .. chunk(o.idx0) .. chunk(o.tim0) ..
         chunk(o.log1) .. chunk(o.idx1) .. chunk(o.tim1)
end

local function make_segment()
  local d = "fuzz_segment"
  reset(d)
  local log5, i5 = records(0, 5)
  local log20, i20 = records(0, 20, "backwards")
  local idx20, tim20 = index_files(i20, 64)
  local loge, _ = records(0, 7, "extreme")

  write(d, "empty", seg_input {})
  write(d, "one-record", seg_input { log0 = records(0, 1) })
  write(d, "five", seg_input { log0 = log5 })
  write(d, "twenty-derived", seg_input { log0 = log20, amode = 3, derive_iv = 5 })
  write(d, "twenty-raw-index", seg_input { log0 = log20, amode = 1, idx0 = idx20, tim0 = tim20 })
  write(d, "twenty-raw-fixed", seg_input { log0 = log20, amode = 2, idx0 = idx20, tim0 = tim20 })
  write(d, "torn-tail", seg_input { log0 = log5 .. records(5, 1):sub(1, 20) })
  write(d, "torn-payload", seg_input { log0 = log5 .. records(5, 3):sub(1, 60) })
  write(d, "garbage-tail", seg_input { log0 = log5 .. garbage(40) })
  write(d, "zero-tail", seg_input { log0 = log5 .. string.rep("\0", 64), amode = 3 })

  -- damage in the middle of the active segment
  local bad = log20:sub(1, i20[5].pos) .. record(4, 1, "k", "x", { crc = 7 }) ..
              log20:sub(i20[6].pos + 1)
  write(d, "bad-crc-middle", seg_input { log0 = bad })
  write(d, "bad-crc-middle-indexed", seg_input { log0 = bad, amode = 1, idx0 = idx20, tim0 = tim20 })
  write(d, "offset-gap", seg_input { log0 = records(0, 3) .. record(4, 9, nil, "gap") })
  write(d, "bad-magic", seg_input { log0 = log5 .. record(5, 1, nil, "m", { magic = 2 }) .. records(6, 2) })
  write(d, "absent-key-with-length", seg_input { log0 = log5 .. record(5, 1, nil, "v", { klen = 1 }) })
  write(d, "reserved-attr", seg_input { log0 = log5 .. record(5, 1, nil, "v", { attrs = 2 }) })
  write(d, "huge-length", seg_input { log0 = log5 .. string.pack("<I4", 0x7FFFFFF0) .. garbage(40) })
  write(d, "extreme-timestamps", seg_input { log0 = loge, amode = 3, derive_iv = 1 })
  write(d, "big-record", seg_input { log0 = records(0, 2) .. record(2, 3, "big", string.rep("B", 3000)) })
  write(d, "empty-key", seg_input { log0 = record(0, 1, "", "") .. record(1, 2, "", "v") })
  write(d, "fix-crc", seg_input { log0 = (log5:gsub("x", "y")), fixcrc = true, keep = 0x04 })
  write(d, "fix-offsets", seg_input { log0 = log5 .. records(0, 3), fixcrc = true, fixoff = true })
  write(d, "raw-garbage-index", seg_input { log0 = log5, amode = 1, idx0 = garbage(36), tim0 = garbage(48) })
  write(d, "fixed-garbage-index", seg_input { log0 = log20, amode = 2, idx0 = garbage(36), tim0 = garbage(48) })
  write(d, "interval-1", seg_input { log0 = log20, amode = 3, open_iv = 0, derive_iv = 0 })
  -- mode 3 damage lists (u16 position, XOR byte): bit rot under an honest index
  local _, _, at = index_files(i20, 64)
  local hit = i20[at[2]]                        -- a record the index names
  local miss = i20[at[2] + 1]                   -- the one after it (no entry at interval 64)
  local function dmg(pos, x) return string.pack("<I2B", pos, x) end
  write(d, "damage-payload-indexed", seg_input { log0 = log20, amode = 3, derive_iv = 4,
                                                 idx0 = dmg(hit.pos + 40, 0x20) })
  write(d, "damage-header-unindexed", seg_input { log0 = log20, amode = 3, derive_iv = 4,
                                                  idx0 = dmg(miss.pos + 8, 0x02) })
  write(d, "damage-header-indexed", seg_input { log0 = log20, amode = 3, derive_iv = 4,
                                                idx0 = dmg(hit.pos + 10, 0x01) })
  write(d, "damage-sealed-payload", seg_input { two = true, n = 20, log0 = log20, smode = 3, derive_iv = 4,
                                                idx0 = dmg(hit.pos + 36, 0x40) .. dmg(miss.pos + 20, 0x01),
                                                log1 = records(20, 2) })
  write(d, "shared-torn", seg_input { log0 = log5 .. records(5, 1):sub(1, 50), shared = true })
  write(d, "shared-bad-crc-indexed", seg_input { log0 = bad, amode = 1, idx0 = idx20, tim0 = tim20, shared = true })

  -- two segments: sealed 0 and active N
  local s1, s1i = records(5, 4)
  local sidx, stim = index_files(i5, 34, 5, log5)
  local aidx, atim = index_files(s1i, 34)
  write(d, "two", seg_input { two = true, n = 5, log0 = log5, log1 = s1 })
  write(d, "two-derived", seg_input { two = true, n = 5, log0 = log5, log1 = s1, amode = 3, smode = 3, derive_iv = 3 })
  write(d, "two-raw-index", seg_input { two = true, n = 5, log0 = log5, idx0 = sidx, tim0 = stim,
                                        log1 = s1, idx1 = aidx, tim1 = atim, amode = 1, smode = 1 })
  write(d, "two-raw-fixed", seg_input { two = true, n = 5, log0 = log5, idx0 = sidx, tim0 = stim,
                                        log1 = s1, idx1 = aidx, tim1 = atim, amode = 2, smode = 2 })
  write(d, "two-trailer-only", seg_input { two = true, n = 5, log0 = log5, idx0 = "",
                                           tim0 = stim:sub(-24), log1 = s1, smode = 1 })
  write(d, "two-n-short", seg_input { two = true, n = 3, log0 = log5, log1 = records(3, 2) })
  write(d, "two-n-long", seg_input { two = true, n = 8, log0 = log5, log1 = records(8, 2), smode = 3 })
  write(d, "two-sealed-bad-crc", seg_input { two = true, n = 20, log0 = bad, log1 = records(20, 3) })
  write(d, "two-sealed-torn", seg_input { two = true, n = 6, log0 = log5 .. garbage(30), log1 = records(6, 2), smode = 3 })
  write(d, "two-derived-shared", seg_input { two = true, n = 5, log0 = log5, log1 = s1 .. garbage(9),
                                             amode = 3, smode = 3, shared = true })
  write(d, "two-big-n", seg_input { two = true, n = 1 << 40, log0 = log5, log1 = records(1 << 40, 3) })
end

-- ------------------------------------------------------------ fuzz_index

-- ops: list of {op, data} per file, .index then .timeindex of each segment.
local function index_input(flags, start, ops)
  local t = { string.pack("<BB", flags, start) }
  for _, o in ipairs(ops) do
    local op, data = o[1], o[2]
    t[#t + 1] = string.char(op)
    if op & 3 >= 2 then t[#t + 1] = chunk(data or "") end
  end
  return table.concat(t)
end

local function make_index()
  local d = "fuzz_index"
  reset(d)
  local C, ABSENT = { 0 }, { 1 }
  local function all(x) local t = {} for i = 1, 16 do t[i] = x end return t end
  local function only(k, x) local t = all(C); t[k] = x; return t end
  local function xor_at(at, bytes) return string.rep("\0", at) .. bytes end

  write(d, "correct", index_input(0, 0, {}))
  write(d, "correct-interval-1", index_input(1 << 2, 7, {}))
  write(d, "correct-interval-4096", index_input(7 << 2, 13, {}))
  write(d, "all-absent", index_input(0, 3, all(ABSENT)))
  write(d, "all-empty", index_input(0, 5, all({ 2, "" })))
  write(d, "absent-index-0", index_input(0, 0, only(1, ABSENT)))
  write(d, "absent-timeindex-0", index_input(0, 0, only(2, ABSENT)))
  write(d, "absent-active", index_input(0, 0, { C, C, C, C, C, C, ABSENT, ABSENT }))
  write(d, "cut-index-1", index_input(0, 1, only(3, { 7, xor_at(12, "") })))
  write(d, "cut-timeindex-trailer", index_input(0, 1, only(4, { 7, xor_at(16, "") })))
  write(d, "cut-mid-entry", index_input(0, 2, only(1, { 7, xor_at(7, "") })))
  write(d, "flip-rel", index_input(0, 0, only(1, { 3, xor_at(0, "\1") })))
  write(d, "flip-rel-fixed", index_input(1, 0, only(1, { 3, xor_at(0, "\1") })))
  write(d, "flip-pos-fixed", index_input(1, 9, only(3, { 3, xor_at(4, "\8") })))
  write(d, "flip-pos-2nd-fixed", index_input(3, 9, only(5, { 3, xor_at(16, "\16") })))
  write(d, "flip-crc", index_input(0, 0, only(2, { 3, xor_at(12, "\255") })))
  write(d, "flip-maxts-up-fixed", index_input(1, 4, only(2, { 3, xor_at(1, "\1") })))
  write(d, "flip-maxts-down-fixed", index_input(1, 4, only(4, { 3, xor_at(0, "\255") })))
  write(d, "flip-trailer-fixed", index_input(2, 4, only(2, { 3, xor_at(16 * 2, "\1") })))
  write(d, "flip-trailer-size", index_input(2, 4, only(4, { 3, xor_at(16 * 2 + 12, "\1") })))
  write(d, "active-flip-fixed", index_input(1, 2, { C, C, C, C, C, C, { 3, xor_at(4, "\3") }, C }))
  write(d, "extend-index", index_input(1, 6, only(1, { 3, xor_at(60, garbage(24)) })))
  write(d, "garbage", index_input(0, 8, { { 2, garbage(36) }, { 2, garbage(64) }, C, C,
                                         { 2, garbage(12) }, { 2, garbage(40) } }))
  write(d, "garbage-fixed", index_input(3, 8, { { 2, garbage(36) }, { 2, garbage(64) },
                                               { 2, garbage(24) }, { 2, garbage(56) } }))
  write(d, "swap-files", index_input(0, 8, { ABSENT, { 2, garbage(24) }, C, ABSENT }))
end

-- ------------------------------------------------------------ fuzz_manifest

local function make_manifest()
  local d = "fuzz_manifest"
  reset(d)
  local function manifest(o)
    o = o or {}
    local files = o.files or [[
    { "name": "00000000000000000000.log", "size": 970, "crc32c": "1a2b3c4d" },
    { "name": "00000000000000000000.index", "size": 12, "crc32c": "00000000" },
    { "name": "00000000000000000022.timeindex", "size": 40, "crc32c": "ffffffff" }]]
    return string.format([[
{
  "id": %s,
  "timestamp": %s,
  "base_offset": %s,
  "high_water_mark": %s,
  "num_segments": %s,
  "total_size": 4576,
  "segment_offsets": %s,
  "mode": %s,%s
  "files": [%s
  ],
  "format": 1
}
]], o.id or '"1795626587719-a4ccb934"', o.ts or "1795626587719", o.base or "0",
      o.hwm or "100", o.nseg or "2", o.offs or "[0, 22]", o.mode or '"link"',
      o.label and ('\n  "label": ' .. o.label .. ",") or "", files)
  end
  local snap = [[{ "id": "%s", "timestamp": 1795626587719, "base_offset": 0,
      "high_water_mark": 100, "num_segments": 1, "total_size": 10,
      "segment_offsets": [0], "mode": "%s"%s }]]
  local function catalog(list)
    return '{ "format": 1, "snapshots": [' .. table.concat(list, ",\n") .. "] }\n"
  end

  write(d, "manifest", manifest())
  write(d, "manifest-label-copy", manifest { label = '"before upgrade \\u00e9\\n"', mode = '"copy"' })
  write(d, "manifest-no-files", manifest { files = "", nseg = "0", offs = "[]" })
  write(d, "manifest-extremes", manifest { ts = "-9223372036854775808", base = "9223372036854775806",
                                            hwm = "9223372036854775807" })
  write(d, "manifest-bad-name", manifest { files = [[{ "name": "../x", "size": 1, "crc32c": "00000000" }]] })
  write(d, "manifest-bad-id", manifest { id = '"../etc"' })
  write(d, "manifest-id-63", manifest { id = '"' .. string.rep("a", 63) .. '"' })
  write(d, "manifest-id-64", manifest { id = '"' .. string.rep("a", 64) .. '"' })
  write(d, "manifest-label-255", manifest { label = '"' .. string.rep("l", 255) .. '"' })
  write(d, "manifest-crc-prefix", manifest { files = [[{ "name": "00000000000000000000.log", "size": 1, "crc32c": "0x12345" }]] })
  write(d, "manifest-negative-size", manifest { files = [[{ "name": "00000000000000000000.log", "size": -1, "crc32c": "00000000" }]] })
  write(d, "manifest-nseg-mismatch", manifest { nseg = "3" })
  write(d, "manifest-hwm-below-base", manifest { base = "10", hwm = "9" })
  write(d, "manifest-float", manifest { ts = "1.5e3" })
  write(d, "manifest-nul-label", manifest { label = '"a\\u0000b"' })
  write(d, "manifest-duplicate-key", manifest { label = '"x",\n  "label": "y"' })
  write(d, "manifest-wrong-types", manifest { id = "17", mode = "null", offs = '{"a": 1}' })
  write(d, "catalog-empty", catalog {})
  write(d, "catalog-one", catalog { snap:format("1795626587719-a4ccb934", "link", "") })
  write(d, "catalog-three", catalog {
    snap:format("1795626587719-a4ccb934", "copy", ', "label": "x"'),
    snap:format("1795626587000-00000000", "link", ""),
    snap:format("A_b.c-9", "other", ', "label": ""') })
  write(d, "catalog-bad-id", catalog { snap:format("a/b", "link", "") })
  write(d, "catalog-not-array", '{ "format": 1, "snapshots": {} }')
  write(d, "not-json", "snapshots")
  write(d, "array", "[1, 2, 3]")
  write(d, "deep", string.rep("[", 200) .. string.rep("]", 200))
end

make_segment()
make_index()
make_manifest()
