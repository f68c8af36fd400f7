-- Several nodes on one database (docs/scaling.md): the node registry, and where each room lives.
-- A node heartbeats its row; one whose heartbeat is older than MCU_NODE_TTL_S is dead (derived,
-- never written). `stopped`: the node exited cleanly; its rooms may be placed elsewhere at once.
CREATE TABLE nodes (
    id           TEXT             NOT NULL PRIMARY KEY,
    url          TEXT             NOT NULL,
    status       TEXT             NOT NULL CHECK (status IN ('active', 'draining', 'stopped')),
    rooms        BIGINT           NOT NULL DEFAULT 0,
    participants BIGINT           NOT NULL DEFAULT 0,
    cpu          DOUBLE PRECISION NOT NULL DEFAULT 0,
    cpu_budget   DOUBLE PRECISION NOT NULL DEFAULT 0,
    started_at   TIMESTAMPTZ      NOT NULL,
    heartbeat_at TIMESTAMPTZ      NOT NULL
);

-- The node hosting the room (NULL: not placed). Placed by one atomic UPDATE.
ALTER TABLE rooms ADD COLUMN node_id TEXT;
-- The node writing the recording: crash recovery touches its own and dead nodes' rows only.
ALTER TABLE recordings ADD COLUMN node_id TEXT;
