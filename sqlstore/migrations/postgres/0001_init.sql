-- tether schema, PostgreSQL. Times are Unix nanoseconds; secrets are sealed.
CREATE TABLE tether_instance (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    id        TEXT   NOT NULL,
    version   BIGINT NOT NULL,
    keys      BYTEA  NOT NULL -- sealed JSON of the signing keys
);

CREATE TABLE tether_connections (
    id      TEXT   PRIMARY KEY,
    owner   TEXT   NOT NULL,
    status  TEXT   NOT NULL,
    kind    TEXT   NOT NULL,
    version BIGINT NOT NULL,
    data    BYTEA  NOT NULL -- JSON of the connection
);
CREATE INDEX tether_connections_owner ON tether_connections (owner, id);
CREATE INDEX tether_connections_status ON tether_connections (status, id);

CREATE TABLE tether_events (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connection_id TEXT   NOT NULL,
    type          TEXT   NOT NULL,
    time_ns       BIGINT NOT NULL,
    actor         TEXT   NOT NULL,
    detail        TEXT   NOT NULL
);
CREATE INDEX tether_events_connection ON tether_events (connection_id, seq);

CREATE TABLE tether_used_invitations (
    key        TEXT   PRIMARY KEY,
    expires_ns BIGINT NOT NULL
);

CREATE TABLE tether_outbox_seq (
    connection_id TEXT   PRIMARY KEY,
    last          BIGINT NOT NULL
);

CREATE TABLE tether_outbox (
    connection_id TEXT   NOT NULL,
    seq           BIGINT NOT NULL,
    payload       BYTEA  NOT NULL,
    created_ns    BIGINT NOT NULL,
    PRIMARY KEY (connection_id, seq)
);

CREATE TABLE tether_inbox (
    connection_id TEXT   PRIMARY KEY,
    position      BIGINT NOT NULL
);

CREATE TABLE tether_leases (
    name     TEXT   PRIMARY KEY,
    holder   TEXT   NOT NULL,
    until_ns BIGINT NOT NULL
);
