-- Records a breach day; a second record of the same day keeps the first's id, baseline
-- and creation, and takes the new deviation and value. Says whether the row is new.
INSERT INTO cost_breach_history AS b (id, tenant_id, entity_type, entity_id, breach_type,
    breach_date, deviation_pct, current_value_cents, baseline_value_cents)
VALUES ($1, $2, $3, $4, $5, $6, $7::float8 + 0, $8::float8 + 0, $9::float8 + 0)
ON CONFLICT ON CONSTRAINT uq_breach_per_entity_day DO UPDATE
    SET deviation_pct = EXCLUDED.deviation_pct,
        current_value_cents = EXCLUDED.current_value_cents
RETURNING (xmax = 0) AS ok
