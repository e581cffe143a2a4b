--- takhin: a Kafka-style segmented commit log with point-in-time snapshots.
-- The storage engine is the C core (takhin.core); this module adds the
-- pure-Lua helpers on top of it.  See docs/API.md.
local core = require("takhin.core")

local M = {
    version = core.version,
    format_version = core.format_version,
    open_log = core.open_log,
    crc32c = core.crc32c,
    core = core,
}

return M
