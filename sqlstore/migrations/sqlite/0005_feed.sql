-- The event feed (tether.FeedStore) needs no change on SQLite: one
-- transaction writes at a time, so seq is handed out in commit order and
-- orders the feed by itself. This migration keeps the numbers of both
-- dialects' migrations in step.
SELECT 1;
