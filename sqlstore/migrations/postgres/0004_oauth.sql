-- One org per team: a non-deleted org connection's ExternalID is unique,
-- whatever its owner. The column copies Connection.ExternalID out of data
-- so that a partial unique index can hold it; of concurrent writers, one
-- wins, across processes too.
ALTER TABLE tether_connections ADD COLUMN external_id TEXT NOT NULL DEFAULT '';

-- data is JSON stored as BYTEA.
UPDATE tether_connections
    SET external_id = COALESCE(convert_from(data, 'UTF8')::jsonb ->> 'ExternalID', '');

-- Org connections that share an ExternalID from before this rule: the
-- oldest keeps it in the index; the others stay readable and deletable,
-- and an update that keeps their ExternalID is refused with org_taken.
UPDATE tether_connections AS c SET external_id = ''
    WHERE c.kind = 'org' AND c.status <> 'deleted' AND c.external_id <> ''
      AND EXISTS (SELECT 1 FROM tether_connections AS o
                  WHERE o.kind = 'org' AND o.status <> 'deleted'
                    AND o.external_id = c.external_id
                    AND o.id < c.id);

CREATE UNIQUE INDEX tether_connections_org_external_id ON tether_connections (external_id)
    WHERE kind = 'org' AND status <> 'deleted' AND external_id <> '';

-- OAuth authorization attempts in flight, each taken once. data is sealed.
CREATE TABLE tether_oauth_states (
    key        TEXT   PRIMARY KEY,
    data       BYTEA  NOT NULL, -- sealed
    expires_ns BIGINT NOT NULL
);
CREATE INDEX tether_oauth_states_expires ON tether_oauth_states (expires_ns);

-- Org connections' OAuth tokens, replaced by compare-and-swap on version.
CREATE TABLE tether_oauth_tokens (
    connection_id TEXT   PRIMARY KEY,
    version       BIGINT NOT NULL,
    data          BYTEA  NOT NULL -- sealed
);
