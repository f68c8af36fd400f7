-- The node registry and room placement (same as PostgreSQL's 0003; a SQLite file is one node,
-- the schema is kept alike so the code is). Timestamps as text, as in 0001.
CREATE TABLE nodes (
    id           TEXT    NOT NULL PRIMARY KEY,
    url          TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('active', 'draining', 'stopped')),
    rooms        INTEGER NOT NULL DEFAULT 0,
    participants INTEGER NOT NULL DEFAULT 0,
    cpu          REAL    NOT NULL DEFAULT 0,
    cpu_budget   REAL    NOT NULL DEFAULT 0,
    started_at   TEXT    NOT NULL,
    heartbeat_at TEXT    NOT NULL
);

ALTER TABLE rooms ADD COLUMN node_id TEXT;
ALTER TABLE recordings ADD COLUMN node_id TEXT;
