DELETE FROM costsim_alert_queue WHERE alert_type = 'cost_anomaly';
DROP INDEX uq_costsim_alert_queue_anomaly;
ALTER TABLE costsim_alert_queue
    DROP CONSTRAINT chk_costsim_alert_queue_anomaly,
    DROP CONSTRAINT chk_costsim_alert_queue_type,
    DROP COLUMN anomaly_id,
    DROP COLUMN tenant_id;
