-- One org per team: a non-deleted org connection's ExternalID is unique,
-- whatever its owner. The column copies Connection.ExternalID out of data
-- so that a partial unique index can hold it; of concurrent writers, one
-- wins.
ALTER TABLE tether_connections ADD COLUMN external_id TEXT NOT NULL DEFAULT '';

-- data is JSON stored as a BLOB: read it as text (SQLite 3.45 and later
-- would take a BLOB for JSONB).
UPDATE tether_connections
    SET external_id = COALESCE(json_extract(CAST(data AS TEXT), '$.ExternalID'), '');

-- Org connections that share an ExternalID from before this rule: the
-- oldest keeps it in the index; the others stay readable and deletable,
-- and an update that keeps their ExternalID is refused with org_taken.
UPDATE tether_connections SET external_id = ''
    WHERE kind = 'org' AND status <> 'deleted' AND external_id <> ''
      AND EXISTS (SELECT 1 FROM tether_connections AS o
                  WHERE o.kind = 'org' AND o.status <> 'deleted'
                    AND o.external_id = tether_connections.external_id
                    AND o.id < tether_connections.id);

CREATE UNIQUE INDEX tether_connections_org_external_id ON tether_connections (external_id)
    WHERE kind = 'org' AND status <> 'deleted' AND external_id <> '';

-- OAuth authorization attempts in flight, each taken once. data is sealed.
CREATE TABLE tether_oauth_states (
    key        TEXT    PRIMARY KEY,
    data       BLOB    NOT NULL, -- sealed
    expires_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX tether_oauth_states_expires ON tether_oauth_states (expires_ns);

-- Org connections' OAuth tokens, replaced by compare-and-swap on version.
CREATE TABLE tether_oauth_tokens (
    connection_id TEXT    PRIMARY KEY,
    version       INTEGER NOT NULL,
    data          BLOB    NOT NULL -- sealed
) WITHOUT ROWID;
