DROP TABLE costsim_cb_incidents;
DROP TABLE costsim_alert_queue;
DROP TABLE costsim_provenance;
