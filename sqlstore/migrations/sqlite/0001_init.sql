-- tether schema, SQLite. Times are Unix nanoseconds; secrets are sealed.
CREATE TABLE tether_instance (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    id        TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    keys      BLOB    NOT NULL -- sealed JSON of the signing keys
);

CREATE TABLE tether_connections (
    id      TEXT    PRIMARY KEY,
    owner   TEXT    NOT NULL,
    status  TEXT    NOT NULL,
    kind    TEXT    NOT NULL,
    version INTEGER NOT NULL,
    data    BLOB    NOT NULL -- JSON of the connection
) WITHOUT ROWID;
CREATE INDEX tether_connections_owner ON tether_connections (owner, id);
CREATE INDEX tether_connections_status ON tether_connections (status, id);

CREATE TABLE tether_events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    connection_id TEXT    NOT NULL,
    type          TEXT    NOT NULL,
    time_ns       INTEGER NOT NULL,
    actor         TEXT    NOT NULL,
    detail        TEXT    NOT NULL
);
CREATE INDEX tether_events_connection ON tether_events (connection_id, seq);

CREATE TABLE tether_used_invitations (
    key        TEXT    PRIMARY KEY,
    expires_ns INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE tether_outbox_seq (
    connection_id TEXT    PRIMARY KEY,
    last          INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE tether_outbox (
    connection_id TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    payload       BLOB    NOT NULL,
    created_ns    INTEGER NOT NULL,
    PRIMARY KEY (connection_id, seq)
) WITHOUT ROWID;

-- Appending is one INSERT that takes last+1; the trigger moves last on.
-- SQLite runs one writer at a time, so two appends never read the same last.
CREATE TRIGGER tether_outbox_next AFTER INSERT ON tether_outbox
BEGIN
    UPDATE tether_outbox_seq SET last = NEW.seq WHERE connection_id = NEW.connection_id;
END;

CREATE TABLE tether_inbox (
    connection_id TEXT    PRIMARY KEY,
    position      INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE tether_leases (
    name     TEXT    PRIMARY KEY,
    holder   TEXT    NOT NULL,
    until_ns INTEGER NOT NULL
) WITHOUT ROWID;
