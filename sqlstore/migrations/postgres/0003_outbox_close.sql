-- Control messages (lifecycle notices) travel in the outbox with the data
-- messages. A deleted connection's outbox is closed: its counter row says
-- so, and appends check it in the statement that takes the next number
-- (the deletion updates that row, so an append waiting on its lock
-- re-reads it).
ALTER TABLE tether_outbox ADD COLUMN control BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE tether_outbox_seq ADD COLUMN closed BOOLEAN NOT NULL DEFAULT FALSE;

-- Connections deleted before: closed, their data messages dropped.
UPDATE tether_outbox_seq SET closed = TRUE
    WHERE connection_id IN (SELECT id FROM tether_connections WHERE status = 'deleted');
DELETE FROM tether_outbox
    WHERE NOT control AND connection_id IN (SELECT id FROM tether_connections WHERE status = 'deleted');
