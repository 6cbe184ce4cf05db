ALTER TABLE costsim_alert_queue DROP COLUMN claim_token;
