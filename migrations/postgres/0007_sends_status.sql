-- Sends by status, newest first (`sends list --status dead`, `/admin/sends`) and counted for
-- /metrics without a scan of the table.
CREATE INDEX sends_status ON sends (status, id);
