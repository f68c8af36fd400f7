-- Rooms and recordings (PostgreSQL).

CREATE TABLE rooms (
    id               UUID        NOT NULL PRIMARY KEY,
    name             TEXT        NOT NULL UNIQUE,
    max_participants BIGINT      NOT NULL CHECK (max_participants > 0),
    layout           TEXT        NOT NULL,
    auto_record      BOOLEAN     NOT NULL DEFAULT FALSE,
    empty_timeout_s  BIGINT      NOT NULL CHECK (empty_timeout_s >= 0),
    metadata         TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);

-- Cursor pagination walks (created_at, id).
CREATE INDEX rooms_created_at_id ON rooms (created_at, id);

-- Recordings outlive their room (no foreign key): a deleted room's files stay listed.
CREATE TABLE recordings (
    id          UUID        NOT NULL PRIMARY KEY,
    room_name   TEXT        NOT NULL,
    status      TEXT        NOT NULL CHECK (status IN ('recording', 'completed', 'interrupted', 'failed')),
    started_at  TIMESTAMPTZ NOT NULL,
    ended_at    TIMESTAMPTZ,
    duration_ms BIGINT,
    size_bytes  BIGINT,
    file_name   TEXT        NOT NULL,
    error       TEXT
);

CREATE INDEX recordings_started_at_id ON recordings (started_at, id);
CREATE INDEX recordings_room_started ON recordings (room_name, started_at);
-- At most one running recording per room.
CREATE UNIQUE INDEX recordings_one_running_per_room ON recordings (room_name) WHERE status = 'recording';
