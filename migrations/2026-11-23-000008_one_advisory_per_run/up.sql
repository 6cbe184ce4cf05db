-- A worker run gets at most one budget advisory (BUDGET_WARNING) per tenant: concurrent
-- callers are decided by this index, not by a check before the insert.
CREATE UNIQUE INDEX uq_cost_anomalies_budget_warning_run
    ON cost_anomalies (tenant_id, (metadata ->> 'run_id'))
    WHERE anomaly_type = 'BUDGET_WARNING' AND metadata ? 'run_id';
