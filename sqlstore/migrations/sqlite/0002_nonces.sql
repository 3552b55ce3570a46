-- Nonces of authenticated requests, shared by the processes on this
-- database so a request replayed to another replica is refused too.
CREATE TABLE tether_nonces (
    key      TEXT    PRIMARY KEY,
    until_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX tether_nonces_until ON tether_nonces (until_ns);
