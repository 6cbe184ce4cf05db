//! Where each table goes when the schema is spread over many servers by tenant (Citus).
//!
//! Every table of a tenant's data is distributed by `tenant_id`, co-located with the
//! others, so that everything one tenant's statement touches lives on one shard. Every
//! key of those tables leads with `tenant_id` (the rule Citus enforces, and PostgreSQL
//! for tables partitioned by tenant). The rest stay on the coordinator, each for the
//! reason given. [`TABLES`] is the one list: the schema tests, the partitioned test
//! layout and `costdb distribute --print` all read it.

/// How a table is placed on a cluster distributed by tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Sharded by `tenant_id`, co-located with every other distributed table.
    Distributed,
    /// Kept whole on the coordinator.
    Local,
}

/// One table's placement and why.
#[derive(Debug, Clone, Copy)]
pub struct TablePlacement {
    /// The table's name.
    pub table: &'static str,
    /// Where it goes.
    pub placement: Placement,
    /// Why, in a sentence.
    pub reason: &'static str,
}

/// The column every distributed table is sharded by.
pub const DISTRIBUTION_COLUMN: &str = "tenant_id";

const fn distributed(table: &'static str, reason: &'static str) -> TablePlacement {
    TablePlacement {
        table,
        placement: Placement::Distributed,
        reason,
    }
}

const fn local(table: &'static str, reason: &'static str) -> TablePlacement {
    TablePlacement {
        table,
        placement: Placement::Local,
        reason,
    }
}

/// Every table the migrations create, in the order they are distributed: a table comes
/// after the tables its foreign keys reference. The first distributed table is the one
/// the others are co-located with.
pub const TABLES: &[TablePlacement] = &[
    distributed("cost_budgets", "a tenant's budgets"),
    distributed(
        "budget_counters",
        "a budget's spend per window, beside its budget",
    ),
    distributed(
        "budget_reservations",
        "a tenant's held and closed reservations",
    ),
    distributed(
        "cost_records",
        "a tenant's LLM calls (each shard range-partitioned by UTC day)",
    ),
    distributed(
        "cost_request_keys",
        "a tenant's request ids, claimed in the statement that writes their records",
    ),
    distributed(
        "cost_rollup_hourly",
        "sums of a tenant's records, written with them",
    ),
    distributed(
        "cost_rollup_daily",
        "sums of a tenant's records, written with them",
    ),
    distributed(
        "cost_rollup_deltas",
        "a tenant's records not yet folded into the rollups, a row each, written with them",
    ),
    distributed(
        "cost_rollup_delta_batches",
        "a tenant's records not yet folded into the rollups, a row a statement, written with them",
    ),
    distributed("cost_anomalies", "a tenant's anomalies"),
    distributed("cost_breach_history", "a tenant's breaches"),
    distributed("cost_drift_tracking", "a tenant's drift trackers"),
    distributed("feature_tags", "a tenant's feature tags"),
    distributed("pattern_feedback", "a tenant's failure patterns"),
    distributed("prediction_events", "a tenant's predictions"),
    distributed("worker_runs", "a tenant's worker runs"),
    local(
        "costsim_alert_queue",
        "a work queue of every tenant's alerts, claimed with FOR UPDATE SKIP LOCKED \
         across tenants, which a multi-shard query cannot do; its rows retire once sent",
    ),
    local(
        "costsim_provenance",
        "rows may have no tenant; drift statistics and the duplicate check by input hash \
         span all tenants",
    ),
    local(
        "coordination_audit_records",
        "rows may have no tenant: the platform's own decisions",
    ),
    local(
        "costsim_cb_incidents",
        "no tenant: the circuit breaker's incidents",
    ),
    local(
        "cost_record_retention",
        "no tenant: the instant before which records were retired",
    ),
    local(
        "leader_terms",
        "no tenant: fencing terms of the coordinator's advisory locks",
    ),
    local(
        "runs",
        "read-only source owned by another service, which sets its keys (rows may have no \
         tenant); read alone, by tenant",
    ),
    local(
        "aos_traces",
        "read-only source owned by another service, which sets its keys; read alone, by \
         tenant",
    ),
];

/// The placement of `table`, if the migrations create it.
pub fn of(table: &str) -> Option<&'static TablePlacement> {
    TABLES.iter().find(|t| t.table == table)
}

/// The distributed tables, in the order they are distributed.
pub fn distributed_tables() -> impl Iterator<Item = &'static str> {
    TABLES
        .iter()
        .filter(|t| t.placement == Placement::Distributed)
        .map(|t| t.table)
}

/// The statements that distribute a migrated schema on a Citus cluster, with a comment
/// line per table saying why it goes where it goes. Run them once, on the coordinator,
/// after `costdb migrate` and before any traffic.
pub fn citus_ddl() -> String {
    let mut out = String::from(
        "-- costdb on Citus: run on the coordinator of a migrated database, before traffic.\n\
         -- cost_records' rollup trigger writes the rollup tables from the shard it runs on;\n\
         -- Citus runs such triggers only when allowed to.\n\
         SET citus.enable_unsafe_triggers = on;\n",
    );
    let mut anchor = None;
    for t in TABLES {
        out.push_str(&format!("\n-- {}: {}\n", t.table, t.reason));
        match (t.placement, anchor) {
            (Placement::Distributed, None) => {
                anchor = Some(t.table);
                out.push_str(&format!(
                    "SELECT create_distributed_table('{}', '{DISTRIBUTION_COLUMN}');\n",
                    t.table
                ));
            }
            (Placement::Distributed, Some(first)) => out.push_str(&format!(
                "SELECT create_distributed_table('{}', '{DISTRIBUTION_COLUMN}', \
                 colocate_with => '{first}');\n",
                t.table
            )),
            (Placement::Local, _) => {
                out.push_str("-- stays a local table on the coordinator\n");
            }
        }
    }
    out
}
