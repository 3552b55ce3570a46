-- Control messages (lifecycle notices) travel in the outbox with the data
-- messages. A deleted connection's outbox is closed: its counter row says
-- so, and appends check it in the statement that takes the next number.
ALTER TABLE tether_outbox ADD COLUMN control INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tether_outbox_seq ADD COLUMN closed INTEGER NOT NULL DEFAULT 0;

-- Connections deleted before: closed, their data messages dropped.
UPDATE tether_outbox_seq SET closed = 1
    WHERE connection_id IN (SELECT id FROM tether_connections WHERE status = 'deleted');
DELETE FROM tether_outbox
    WHERE control = 0 AND connection_id IN (SELECT id FROM tether_connections WHERE status = 'deleted');
