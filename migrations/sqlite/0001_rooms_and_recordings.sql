-- Rooms and recordings (SQLite).
-- Timestamps are fixed-width RFC 3339 UTC text with microseconds ('2025-01-31T12:00:00.000000Z'),
-- so text order is time order; ids are hyphenated lowercase UUID text.

CREATE TABLE rooms (
    id               TEXT    NOT NULL PRIMARY KEY,
    name             TEXT    NOT NULL UNIQUE,
    max_participants INTEGER NOT NULL CHECK (max_participants > 0),
    layout           TEXT    NOT NULL,
    auto_record      INTEGER NOT NULL DEFAULT 0 CHECK (auto_record IN (0, 1)),
    empty_timeout_s  INTEGER NOT NULL CHECK (empty_timeout_s >= 0),
    metadata         TEXT,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL
);

-- Cursor pagination walks (created_at, id).
CREATE INDEX rooms_created_at_id ON rooms (created_at, id);

-- Recordings outlive their room (no foreign key): a deleted room's files stay listed.
CREATE TABLE recordings (
    id          TEXT    NOT NULL PRIMARY KEY,
    room_name   TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('recording', 'completed', 'interrupted', 'failed')),
    started_at  TEXT    NOT NULL,
    ended_at    TEXT,
    duration_ms INTEGER,
    size_bytes  INTEGER,
    file_name   TEXT    NOT NULL,
    error       TEXT
);

CREATE INDEX recordings_started_at_id ON recordings (started_at, id);
CREATE INDEX recordings_room_started ON recordings (room_name, started_at);
-- At most one running recording per room.
CREATE UNIQUE INDEX recordings_one_running_per_room ON recordings (room_name) WHERE status = 'recording';
