-- Identities kept out of a room after a kick, until `until` (same text timestamps as 0001).
-- Keyed by the room's id, so a room deleted and created again under the same name starts clean.
CREATE TABLE bans (
    room_id  TEXT NOT NULL,
    identity TEXT NOT NULL,
    until    TEXT NOT NULL,
    PRIMARY KEY (room_id, identity)
);
