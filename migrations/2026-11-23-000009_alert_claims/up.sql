-- Lease-based delivery of the alert outbox: a claimed alert stays 'pending' with its
-- next_attempt_at pushed to the lease's end (so it comes back by itself when the claimer
-- vanishes) and a claim token that its outcome must present. Readers of the original
-- shape ignore the column.
ALTER TABLE costsim_alert_queue ADD COLUMN claim_token uuid;
