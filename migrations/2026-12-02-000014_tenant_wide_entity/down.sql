-- The rows keep NULL: the original's readers treat NULL and '' alike.
DROP TRIGGER trg_drift_tracking_tenant_wide ON cost_drift_tracking;
DROP TRIGGER trg_breach_history_tenant_wide ON cost_breach_history;
DROP FUNCTION costdb_tenant_wide_entity();
