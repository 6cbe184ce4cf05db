-- Folds the slots of every rollup row of a UTC day before $1 into slot 0: the slots spread
-- concurrent writers of a hot key while its day is current; once the day is past, one row
-- per key is all readers need. Moves whole rows in one statement, so every snapshot sees
-- the same sums before and after; returns how many rows it removed.
WITH hourly AS (
    DELETE FROM cost_rollup_hourly
    WHERE slot <> 0 AND bucket_hour < $1::date::timestamp AT TIME ZONE 'UTC'
    RETURNING *
), hourly_folded AS (
    INSERT INTO cost_rollup_hourly AS r
        (tenant_id, bucket_hour, model, feature_tag, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT tenant_id, bucket_hour, model, feature_tag, 0, sum(requests), sum(retries),
           sum(input_tokens), sum(output_tokens), sum(cost_cents)
    FROM hourly
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, bucket_hour, model, feature_tag, slot) DO UPDATE SET
        requests = r.requests + excluded.requests,
        retries = r.retries + excluded.retries,
        input_tokens = r.input_tokens + excluded.input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        cost_cents = r.cost_cents + excluded.cost_cents
    RETURNING 1
), daily AS (
    DELETE FROM cost_rollup_daily WHERE slot <> 0 AND day < $1::date RETURNING *
), daily_folded AS (
    INSERT INTO cost_rollup_daily AS r
        (tenant_id, day, feature_tag, user_id, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT tenant_id, day, feature_tag, user_id, 0, sum(requests), sum(retries),
           sum(input_tokens), sum(output_tokens), sum(cost_cents)
    FROM daily
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, day, feature_tag, user_id, slot) DO UPDATE SET
        requests = r.requests + excluded.requests,
        retries = r.retries + excluded.retries,
        input_tokens = r.input_tokens + excluded.input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        cost_cents = r.cost_cents + excluded.cost_cents
    RETURNING 1
)
SELECT (SELECT count(*) FROM hourly) + (SELECT count(*) FROM daily) AS n,
       (SELECT count(*) FROM hourly_folded) + (SELECT count(*) FROM daily_folded) AS folded
