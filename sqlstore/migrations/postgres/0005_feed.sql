-- The event feed (tether.FeedStore) is ordered by (tx, seq): seq comes
-- from an identity column, taken at insert, not at commit, so it alone
-- would let a reader see a higher seq commit before a lower one and skip
-- the lower one for good. tx is the writing transaction's ID, or, if
-- higher, the tx of the connection's previous event: the store sets it on
-- every insert (see insertEvent and ListFeed in the package). The default
-- covers writers that do not, among them a process of an earlier version
-- during a rolling upgrade; their events are still listed once, though
-- one of them could come before an earlier event of its connection.
--
-- Events from before this migration get its own transaction's ID: they
-- come first, in seq order.
ALTER TABLE tether_events ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX tether_events_feed ON tether_events (tx, seq);
