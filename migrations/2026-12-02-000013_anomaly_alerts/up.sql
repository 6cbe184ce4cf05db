-- Cost-anomaly alerts of their own in the outbox. The alert types become a closed set in
-- the table (the three CostSim breaker types of the original, plus `cost_anomaly`), and an
-- anomaly alert names its anomaly, which is queued at most once (a detector re-run the same
-- day upserts the same anomaly, so it queues nothing new). Both columns are nullable:
-- readers and writers of the original shape see the table as before.
ALTER TABLE costsim_alert_queue
    ADD COLUMN tenant_id  varchar(64),
    ADD COLUMN anomaly_id varchar(64),
    ADD CONSTRAINT chk_costsim_alert_queue_type
        CHECK (alert_type IN ('disable', 'enable', 'canary_fail', 'cost_anomaly')),
    ADD CONSTRAINT chk_costsim_alert_queue_anomaly
        CHECK ((alert_type IS NOT DISTINCT FROM 'cost_anomaly')
               = (anomaly_id IS NOT NULL AND tenant_id IS NOT NULL));
CREATE UNIQUE INDEX uq_costsim_alert_queue_anomaly
    ON costsim_alert_queue (tenant_id, anomaly_id) WHERE anomaly_id IS NOT NULL;
