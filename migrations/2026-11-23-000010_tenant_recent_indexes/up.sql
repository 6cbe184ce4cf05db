-- Newest-first pages of one tenant's patterns and predictions, served by an index that
-- leads with the tenant.
CREATE INDEX ix_pattern_feedback_tenant_type_detected
    ON pattern_feedback (tenant_id, pattern_type, detected_at);
CREATE INDEX ix_prediction_events_tenant_created ON prediction_events (tenant_id, created_at);
CREATE INDEX ix_worker_runs_tenant_status_created ON worker_runs (tenant_id, status, created_at);
