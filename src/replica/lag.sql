-- How far behind its primary this server is, in seconds: 0 when it is not a replica, or
-- has replayed all the WAL it received; else the time since the primary committed the
-- last transaction replayed here (NULL when it has replayed none since it started).
SELECT CASE
         WHEN NOT pg_is_in_recovery() THEN 0
         WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
         ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())
       END::float8 AS lag_seconds
