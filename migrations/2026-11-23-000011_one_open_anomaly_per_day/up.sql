-- One open anomaly per tenant, type, entity type, entity and UTC day of detected_at, so
-- that concurrent detectors upsert one row. Worker budget advisories (a run id in the
-- metadata) are one per run instead (uq_cost_anomalies_budget_warning_run).
CREATE UNIQUE INDEX uq_cost_anomalies_open_per_day
    ON cost_anomalies (tenant_id, anomaly_type, entity_type, entity_id,
                       date_bin('1 day', detected_at, '2000-01-01 00:00:00+00'))
    NULLS NOT DISTINCT
    WHERE NOT resolved AND NOT (anomaly_type = 'BUDGET_WARNING' AND metadata ? 'run_id');
