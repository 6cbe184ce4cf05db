-- Inserts the anomaly, or, when the tenant already has an open one with the same key on
-- the same UTC day, updates its observation (value, deviation, severity, message, breach
-- count, cause, metadata), keeping its id, expected value, threshold and detection
-- instant. The unique index uq_cost_anomalies_open_per_day decides, so concurrent
-- detectors leave one row. Amounts + 0 store -0 as 0.
INSERT INTO cost_anomalies AS a (id, tenant_id, anomaly_type, severity, entity_type, entity_id,
    current_value_cents, expected_value_cents, deviation_pct, threshold_pct, message,
    breach_count, derived_cause, metadata, detected_at)
VALUES ($1, $2, $3, $4, $5, $6, $7::float8 + 0, $8::float8 + 0, $9::float8 + 0,
        $10::float8 + 0, $11, $12, $13, $14, $15)
ON CONFLICT (tenant_id, anomaly_type, entity_type, entity_id,
             date_bin('1 day', detected_at, '2000-01-01 00:00:00+00'))
    WHERE NOT resolved AND NOT (anomaly_type = 'BUDGET_WARNING' AND metadata ? 'run_id')
DO UPDATE SET current_value_cents = EXCLUDED.current_value_cents,
    deviation_pct = EXCLUDED.deviation_pct, severity = EXCLUDED.severity,
    message = EXCLUDED.message, breach_count = EXCLUDED.breach_count,
    derived_cause = EXCLUDED.derived_cause, metadata = EXCLUDED.metadata
RETURNING a.*
