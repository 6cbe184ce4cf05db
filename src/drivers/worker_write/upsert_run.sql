-- A worker run in one statement: insert, or update the tenant's run of that id if it is
-- not finished. The pairs ($6,$7), ($8,$9)… are "set this column?" and its value.
INSERT INTO worker_runs AS w (id, tenant_id, task, input_json, status, success, error,
    output_json, replay_token_json, total_tokens, total_latency_ms, policy_violations,
    recoveries, cost_cents, started_at, completed_at)
VALUES ($1, $2, $3, $4, coalesce($5, 'queued'), $7, $9, $11, $13, $15, $17,
    coalesce($18, 0), coalesce($19, 0), $20,
    CASE WHEN $5 = 'running' THEN now() END,
    CASE WHEN $5 IN ('completed', 'failed', 'crashed') THEN now() END)
ON CONFLICT (tenant_id, id) DO UPDATE SET
    status            = coalesce($5, w.status),
    success           = CASE WHEN $6 THEN $7 ELSE w.success END,
    error             = CASE WHEN $8 THEN $9 ELSE w.error END,
    output_json       = CASE WHEN $10 THEN $11 ELSE w.output_json END,
    replay_token_json = CASE WHEN $12 THEN $13 ELSE w.replay_token_json END,
    total_tokens      = CASE WHEN $14 THEN $15 ELSE w.total_tokens END,
    total_latency_ms  = CASE WHEN $16 THEN $17 ELSE w.total_latency_ms END,
    policy_violations = coalesce($18, w.policy_violations),
    recoveries        = coalesce($19, w.recoveries),
    cost_cents        = coalesce($20, w.cost_cents),
    started_at        = CASE WHEN $5 = 'running'
                             THEN coalesce(w.started_at, now()) ELSE w.started_at END,
    completed_at      = CASE WHEN $5 IN ('completed', 'failed', 'crashed')
                             THEN coalesce(w.completed_at, now()) ELSE w.completed_at END
WHERE w.status NOT IN ('completed', 'failed', 'crashed')
RETURNING w.*
