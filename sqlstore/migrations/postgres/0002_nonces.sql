-- Nonces of authenticated requests, shared by the processes on this
-- database so a request replayed to another replica is refused too.
CREATE TABLE tether_nonces (
    key      TEXT   PRIMARY KEY,
    until_ns BIGINT NOT NULL
);
CREATE INDEX tether_nonces_until ON tether_nonces (until_ns);
