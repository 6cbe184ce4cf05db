CREATE INDEX ix_cost_records_tenant_id      ON cost_records (tenant_id);
CREATE INDEX ix_cost_records_user_id        ON cost_records (user_id);
CREATE INDEX ix_cost_records_feature_tag    ON cost_records (feature_tag);
CREATE INDEX ix_cost_records_tenant_feature ON cost_records (tenant_id, feature_tag);
CREATE INDEX ix_cost_records_tenant_user    ON cost_records (tenant_id, user_id);
DROP TRIGGER trg_cost_records_fold ON cost_records;
DROP FUNCTION costdb_fold_cost_records();
DROP TABLE cost_rollup_daily;
DROP TABLE cost_rollup_hourly;
