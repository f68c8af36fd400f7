-- Identities kept out of a room after a kick, until `until`.
-- Keyed by the room's id, so a room deleted and created again under the same name starts clean.
CREATE TABLE bans (
    room_id  UUID        NOT NULL,
    identity TEXT        NOT NULL,
    until    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (room_id, identity)
);
