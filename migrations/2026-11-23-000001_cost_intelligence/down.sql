DROP TABLE cost_drift_tracking;
DROP TABLE cost_breach_history;
DROP TABLE feature_tags;
DROP TABLE cost_budgets;
DROP TABLE cost_anomalies;
DROP TABLE cost_records;
