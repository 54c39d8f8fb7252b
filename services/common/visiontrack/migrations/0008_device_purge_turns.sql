-- Purges are taken in turns: those never visited first, then the longest unvisited. Taken oldest request
-- first, ten deleted devices in their grace period (kept ten minutes after emptying, for readings still in
-- the stream) held every later deletion back until their grace ran out.
ALTER TABLE device_purges ADD COLUMN visited_at timestamptz;
