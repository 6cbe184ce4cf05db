-- Takes up to $2 due alerts, oldest first, skipping those another transaction holds, and
-- leases them until $1 + $3; a new token marks the claim.
UPDATE costsim_alert_queue q
SET next_attempt_at = $1::timestamptz + $3::interval, claim_token = gen_random_uuid()
FROM (
    SELECT id FROM costsim_alert_queue
    WHERE status = 'pending' AND next_attempt_at <= $1::timestamptz
    ORDER BY next_attempt_at, id
    LIMIT $2::bigint
    FOR UPDATE SKIP LOCKED
) due
WHERE q.id = due.id
RETURNING q.*
