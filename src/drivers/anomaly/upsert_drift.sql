-- Counts a drift day of the entity in one statement: a new or inactive tracker starts at 1
-- (and becomes active), an active one checked yesterday goes up by one, one already
-- checked today stays, one with a gap starts again at 1. Returns the count.
INSERT INTO cost_drift_tracking AS d (id, tenant_id, entity_type, entity_id,
    rolling_7d_avg_cents, baseline_7d_avg_cents, drift_pct, drift_days_count,
    first_drift_date, last_check_date, is_active)
VALUES ($1, $2, $3, $4, $5::float8 + 0, $6::float8 + 0, $7::float8 + 0, 1, $8, $8, true)
ON CONFLICT ON CONSTRAINT uq_drift_tracker_per_entity DO UPDATE SET
    drift_days_count = CASE
        WHEN d.is_active AND d.last_check_date = $8 THEN d.drift_days_count
        WHEN d.is_active AND d.last_check_date = $8::date - 1 THEN d.drift_days_count + 1
        ELSE 1 END,
    first_drift_date = CASE
        WHEN d.is_active AND d.last_check_date IN ($8, $8::date - 1) THEN d.first_drift_date
        ELSE $8 END,
    rolling_7d_avg_cents = EXCLUDED.rolling_7d_avg_cents,
    baseline_7d_avg_cents = EXCLUDED.baseline_7d_avg_cents,
    drift_pct = EXCLUDED.drift_pct, last_check_date = $8, is_active = true,
    updated_at = now()
RETURNING drift_days_count AS n
