-- The tenant-wide entity of the breach history and the drift trackers is NULL. The
-- original system wrote '' for it; rows it wrote become NULL here, and a trigger folds
-- every later '' to NULL, so a service of the original's shape writing beside costdb
-- meets the same unique keys (one row per tenant, entity, rule and day; one tracker per
-- entity) instead of a second row beside costdb's.

-- Where both forms exist for one key, keep one row: costdb's NULL row for a breach day,
-- the most recently checked tracker.
DELETE FROM cost_breach_history e
USING cost_breach_history n
WHERE e.entity_id = '' AND n.entity_id IS NULL
  AND (n.tenant_id, n.entity_type, n.breach_type, n.breach_date)
    = (e.tenant_id, e.entity_type, e.breach_type, e.breach_date);
UPDATE cost_breach_history SET entity_id = NULL WHERE entity_id = '';

DELETE FROM cost_drift_tracking d
USING cost_drift_tracking o
WHERE coalesce(d.entity_id, '') = '' AND coalesce(o.entity_id, '') = ''
  AND d.id <> o.id
  AND (o.tenant_id, o.entity_type) = (d.tenant_id, d.entity_type)
  AND (o.last_check_date, o.is_active, o.id) > (d.last_check_date, d.is_active, d.id);
UPDATE cost_drift_tracking SET entity_id = NULL WHERE entity_id = '';

CREATE FUNCTION costdb_tenant_wide_entity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.entity_id := nullif(NEW.entity_id, '');
    RETURN NEW;
END
$$;
CREATE TRIGGER trg_breach_history_tenant_wide
    BEFORE INSERT OR UPDATE OF entity_id ON cost_breach_history
    FOR EACH ROW EXECUTE FUNCTION costdb_tenant_wide_entity();
CREATE TRIGGER trg_drift_tracking_tenant_wide
    BEFORE INSERT OR UPDATE OF entity_id ON cost_drift_tracking
    FOR EACH ROW EXECUTE FUNCTION costdb_tenant_wide_entity();
