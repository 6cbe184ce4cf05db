DROP TRIGGER worker_runs_immutable_guard ON worker_runs;
DROP FUNCTION prevent_worker_run_mutation();
DROP TABLE worker_runs;
