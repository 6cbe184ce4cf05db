//! `CostWriteDriver`: feature tags, cost records (single, bulk, idempotent) and budgets.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::dsl::now;
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamptz};
use diesel::upsert::{excluded, on_constraint};
use serde::{Deserialize, Serialize};

use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::models::{
    ids, CostBudget, CostInput, CostRecord, FeatureTag, NewCostBudget, NewFeatureTag,
};
use crate::prepared::{Param, Prepared};
use crate::schema::{cost_budgets, cost_records, cost_request_keys, feature_tags};
use crate::sql_fns::transaction_timestamp;
use crate::types::{limits, BudgetScope, TenantId};
use crate::validate;

/// The outcome of recording one cost in bulk: its key, and whether this call inserted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedCost {
    /// The record's id: new, or the existing record's for a repeated `request_id`.
    pub id: String,
    /// The record's instant, which with the tenant and id finds it in one partition.
    pub created_at: DateTime<Utc>,
    /// False when the tenant already had a record with the same `request_id`.
    pub inserted: bool,
}

/// A new feature tag, for [`CostWriteDriver::insert_feature_tag`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureTagInput {
    /// The tag as records carry it, e.g. `support.chat` (at most 128 characters).
    pub tag: String,
    /// Display name (at most 256).
    pub display_name: String,
    /// Free text.
    pub description: Option<String>,
    /// Budget in cents, not negative.
    pub budget_cents: Option<i32>,
}

/// Partial update of a feature tag: `None` leaves a field as it is; `Some(None)` clears a
/// nullable one.
#[derive(Debug, Clone, Default, PartialEq, AsChangeset)]
#[diesel(table_name = feature_tags)]
pub struct FeatureTagChanges {
    /// New display name (at most 256).
    pub display_name: Option<String>,
    /// New description, or `Some(None)` to clear it.
    pub description: Option<Option<String>>,
    /// New budget in cents, or `Some(None)` to clear it.
    pub budget_cents: Option<Option<i32>>,
    /// Activate or deactivate.
    pub is_active: Option<bool>,
}

/// The limits of a budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetLimits {
    /// Daily limit in cents.
    pub daily_limit_cents: Option<i32>,
    /// Monthly limit in cents.
    pub monthly_limit_cents: Option<i32>,
    /// Warning threshold in percent of a limit (`0..=100`).
    pub warn_threshold_pct: i32,
    /// Whether spend above the limit is refused.
    pub hard_limit_enabled: bool,
}

/// Writes of the cost-intelligence API: feature tags, cost records and budgets.
///
/// Borrows the caller's connection; every method refuses to run outside a transaction
/// and never commits.
pub struct CostWriteDriver<'c> {
    conn: &'c mut PgConnection,
}

#[derive(QueryableByName)]
struct StoredRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

/// How a bulk write sends its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BulkMode {
    /// Binary COPY inside a savepoint when no request id repeats, else `INSERT`.
    CopyFirst,
    /// One `INSERT … SELECT FROM unnest(…)` per chunk: one round trip, no savepoint, for a
    /// caller that owns a short transaction and writes small batches.
    Insert,
    /// `INSERT` that also skips ids already stored: the retry of a batch whose commit
    /// outcome was unknown; a row whose id is stored counts as inserted, and nothing is
    /// stored twice.
    Retry,
}

/// How many rows [`CostWriteDriver::record_costs`] sends in one statement: a larger call is
/// split, so its memory stays bounded and its speed per row stays the same.
pub const BULK_CHUNK: usize = 5_000;

/// The bulk insert: the thirteen columns as arrays, in column order.
const BULK_INSERT: &str = include_str!("cost_write/insert_bulk.sql");

/// Cost records as `insert_bulk.sql` (and the admission service's batch function) take
/// them: one array per column, element i of each the record i.
pub(crate) struct CostColumns<'a> {
    ids: Vec<&'a str>,
    tenants: Vec<&'a str>,
    users: Vec<Option<&'a str>>,
    tags: Vec<Option<&'a str>>,
    requests: Vec<Option<&'a str>>,
    workflows: Vec<Option<&'a str>>,
    skills: Vec<Option<&'a str>>,
    models: Vec<&'a str>,
    input_tokens: Vec<i32>,
    output_tokens: Vec<i32>,
    cents: Vec<f64>,
    retries: Vec<bool>,
    created_at: Vec<Option<DateTime<Utc>>>,
}

impl<'a> CostColumns<'a> {
    /// The columns of `rows`: each record's id and input (validated).
    pub(crate) fn new(rows: impl Iterator<Item = (&'a str, &'a CostInput)>) -> Self {
        let mut c = CostColumns {
            ids: Vec::new(),
            tenants: Vec::new(),
            users: Vec::new(),
            tags: Vec::new(),
            requests: Vec::new(),
            workflows: Vec::new(),
            skills: Vec::new(),
            models: Vec::new(),
            input_tokens: Vec::new(),
            output_tokens: Vec::new(),
            cents: Vec::new(),
            retries: Vec::new(),
            created_at: Vec::new(),
        };
        for (id, cost) in rows {
            c.ids.push(id);
            c.tenants.push(&cost.tenant_id);
            c.users.push(cost.user_id.as_deref());
            c.tags.push(cost.feature_tag.as_deref());
            c.requests.push(cost.request_id.as_deref());
            c.workflows.push(cost.workflow_id.as_deref());
            c.skills.push(cost.skill_id.as_deref());
            c.models.push(&cost.model);
            c.input_tokens.push(cost.input_tokens);
            c.output_tokens.push(cost.output_tokens);
            c.cents.push(cost.cost_cents);
            c.retries.push(cost.is_retry);
            c.created_at.push(cost.created_at);
        }
        c
    }

    /// The thirteen parameters, in the column order of `insert_bulk.sql`.
    pub(crate) fn params(&self) -> [Param<'_>; 13] {
        [
            Param::Strs(&self.ids),
            Param::Strs(&self.tenants),
            Param::OptTexts(&self.users),
            Param::OptTexts(&self.tags),
            Param::OptTexts(&self.requests),
            Param::OptTexts(&self.workflows),
            Param::OptTexts(&self.skills),
            Param::Strs(&self.models),
            Param::Int4s(&self.input_tokens),
            Param::Int4s(&self.output_tokens),
            Param::Floats(&self.cents),
            Param::Flags(&self.retries),
            Param::OptInstants(&self.created_at),
        ]
    }
}

impl<'c> CostWriteDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        CostWriteDriver { conn }
    }

    /// Registers a feature tag for a tenant; a tag the tenant already has is
    /// [`Error::Conflict`] and leaves the transaction usable.
    #[doc(alias = "create_feature_tag")]
    pub fn insert_feature_tag(
        &mut self,
        tenant_id: &TenantId,
        input: &FeatureTagInput,
    ) -> Result<FeatureTag> {
        validate::required("tag", &input.tag, limits::TAG)?;
        validate::required("display_name", &input.display_name, limits::DISPLAY_NAME)?;
        validate::optional_text("description", input.description.as_deref())?;
        if let Some(cents) = input.budget_cents {
            validate::non_negative("budget_cents", cents.into())?;
        }
        require_transaction(self.conn)?;
        diesel::insert_into(feature_tags::table)
            .values(NewFeatureTag {
                id: ids::feature_tag_id(),
                tenant_id: tenant_id.into(),
                tag: input.tag.clone(),
                display_name: input.display_name.clone(),
                description: input.description.clone(),
                budget_cents: input.budget_cents,
            })
            .on_conflict((feature_tags::tenant_id, feature_tags::tag))
            .do_nothing()
            .returning(FeatureTag::as_returning())
            .get_result(self.conn)
            .optional()?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "feature tag {:?} already exists for this tenant",
                    input.tag
                ))
            })
    }

    /// Changes only the given fields of the tenant's feature tag `id`, and `updated_at`.
    pub fn update_feature_tag(
        &mut self,
        tenant_id: &TenantId,
        id: &str,
        changes: &FeatureTagChanges,
    ) -> Result<FeatureTag> {
        validate::required("id", id, limits::COST_ID)?;
        if let Some(name) = &changes.display_name {
            validate::required("display_name", name, limits::DISPLAY_NAME)?;
        }
        if let Some(Some(description)) = &changes.description {
            validate::text("description", description)?;
        }
        if let Some(Some(cents)) = changes.budget_cents {
            validate::non_negative("budget_cents", cents.into())?;
        }
        require_transaction(self.conn)?;
        diesel::update(
            feature_tags::table
                .filter(feature_tags::tenant_id.eq(tenant_id))
                .filter(feature_tags::id.eq(id)),
        )
        .set((changes, feature_tags::updated_at.eq(now)))
        .returning(FeatureTag::as_returning())
        .get_result(self.conn)
        .optional()?
        .ok_or_else(|| Error::NotFound {
            entity: "feature tag",
            id: id.into(),
        })
    }

    /// Records one cost and returns its row; for a `request_id` the tenant already
    /// recorded, returns the existing row and adds nothing.
    ///
    /// The statement has a fixed text, so it is prepared once per connection and reused.
    #[doc(alias = "create_cost_record")]
    pub fn insert_cost_record(&mut self, cost: &CostInput) -> Result<CostRecord> {
        cost.validate()?;
        require_transaction(self.conn)?;
        Ok(cost.insert_once(self.conn)?.0)
    }

    /// Records many costs and returns their ids in input order.
    ///
    /// All inputs are validated before any SQL: one bad input refuses the whole batch.
    /// A `request_id` repeated within the batch, or already recorded for the tenant,
    /// yields the first record's id with `inserted: false`.
    ///
    /// When no request id repeats within the batch, the rows go in by binary `COPY`, inside
    /// one savepoint of the caller's transaction; should one of them already be recorded,
    /// the savepoint is rolled back and the batch goes in by `INSERT … ON CONFLICT DO
    /// NOTHING`, [`BULK_CHUNK`] rows per statement. Either way request ids are claimed in
    /// one global order, (tenant, request id) byte by byte, whatever the input order and
    /// the database's collation, so concurrent calls that share request ids wait for each
    /// other instead of deadlocking.
    ///
    /// The savepoint is a subtransaction: one transaction that makes more than about 64
    /// calls overflows PostgreSQL's per-backend subtransaction cache, which slows other
    /// sessions' snapshots until it ends. Prefer fewer, larger calls.
    pub fn record_costs(&mut self, costs: &[CostInput]) -> Result<Vec<RecordedCost>> {
        let ids = costs.iter().map(|_| ids::cost_record_id()).collect();
        self.insert_with_ids(costs, ids, BulkMode::CopyFirst)
    }

    /// [`Self::record_costs`] with the ids given, one per cost, by the statement `mode`
    /// picks: the recorder's entry, which fixes the ids before the first attempt. Every
    /// cost and id is validated first, as in every entry of the driver. `CopyFirst` needs
    /// the caller's transaction (its savepoint); `Insert` and `Retry` send one statement
    /// per [`BULK_CHUNK`] rows, atomic on its own, which the recorder commits by itself.
    pub(crate) fn insert_with_ids(
        &mut self,
        costs: &[CostInput],
        ids: Vec<String>,
        mode: BulkMode,
    ) -> Result<Vec<RecordedCost>> {
        if ids.len() != costs.len() {
            return Err(Error::invalid("ids", "one id per cost"));
        }
        for (cost, id) in costs.iter().zip(&ids) {
            cost.validate()?;
            validate::required("id", id, limits::COST_ID)?;
        }
        if mode == BulkMode::CopyFirst {
            require_transaction(self.conn)?;
        }
        let retry = mode == BulkMode::Retry;
        let mut out: Vec<RecordedCost> = ids
            .into_iter()
            .zip(costs)
            .map(|(id, cost)| RecordedCost {
                id,
                // Until the statement tells: the given instant, or the transaction's.
                created_at: cost.created_at.unwrap_or(DateTime::<Utc>::MIN_UTC),
                inserted: true,
            })
            .collect();
        let key = |i: usize| {
            let c = &costs[i];
            (
                c.request_id.is_none(),
                c.tenant_id.as_str(),
                c.request_id.as_deref(),
            )
        };
        let mut order: Vec<usize> = (0..costs.len()).collect();
        order.sort_unstable_by(|&a, &b| key(a).cmp(&key(b)).then(a.cmp(&b)));
        let repeats = order
            .windows(2)
            .any(|w| key(w[0]).2.is_some() && key(w[0]) == key(w[1]));
        if !repeats && mode == BulkMode::CopyFirst {
            match self.copy_in_order(costs, &order, &mut out) {
                Ok(()) => return Ok(out),
                Err(e) if is_request_conflict(&e) => {} // some were recorded before
                Err(e) => return Err(e),
            }
        }
        for chunk in order.chunks(BULK_CHUNK) {
            self.insert_chunk(costs, chunk, &mut out, retry)?;
        }
        Ok(out)
    }

    /// Copies `costs` in `order` with binary COPY, all or nothing (one savepoint), and
    /// fills in the instants of `out`. The table's trigger claims the request ids: one
    /// already held fails the COPY as a unique violation of `cost_request_keys_pkey`.
    ///
    /// The savepoint is opened by hand, not as a nested Diesel transaction, so that the
    /// same round trip tells the trigger the statement's shape (as `insert_bulk.sql` does),
    /// which spares it counting the records and their tenants.
    fn copy_in_order(
        &mut self,
        costs: &[CostInput],
        order: &[usize],
        out: &mut [RecordedCost],
    ) -> Result<()> {
        if costs.iter().any(|c| c.created_at.is_none()) {
            let default_at = transaction_now(self.conn)?;
            for (row, cost) in out.iter_mut().zip(costs) {
                row.created_at = cost.created_at.unwrap_or(default_at);
            }
        }
        let out = &*out;
        // Only two counts are written into the text: no input ever is.
        let open = if order.len() <= BULK_CHUNK {
            format!(
                "SAVEPOINT costdb_copy; \
                 SELECT set_config('costdb.statement_shape', '{} {}', true)",
                order.len(),
                distinct_tenants(costs, order)
            )
        } else {
            // Chunks of a larger call fold as they land: the trigger counts them itself.
            "SAVEPOINT costdb_copy".to_owned()
        };
        self.conn.batch_execute(&open)?;
        let copied = order.chunks(BULK_CHUNK).try_for_each(|chunk| {
            let rows = chunk
                .iter()
                .map(|&i| costs[i].as_new_record(&out[i].id, out[i].created_at));
            diesel::copy_from(cost_records::table)
                .from_insertable(rows.collect::<Vec<_>>())
                .execute(self.conn)
                .map(drop)
        });
        match copied {
            Ok(()) => Ok(self.conn.batch_execute("RELEASE SAVEPOINT costdb_copy")?),
            Err(e) => {
                self.conn.batch_execute(
                    "ROLLBACK TO SAVEPOINT costdb_copy; RELEASE SAVEPOINT costdb_copy",
                )?;
                Err(e.into())
            }
        }
    }

    /// Inserts `costs[i]` for each `i` of `chunk`, in that order, and fills in `out[i]`.
    fn insert_chunk(
        &mut self,
        costs: &[CostInput],
        chunk: &[usize],
        out: &mut [RecordedCost],
        retry: bool,
    ) -> Result<()> {
        let columns = CostColumns::new(chunk.iter().map(|&i| (out[i].id.as_str(), &costs[i])));
        let stored: Vec<StoredRow> = Prepared {
            sql: BULK_INSERT,
            params: &columns.params(),
        }
        .load(self.conn)?;
        let mut inserted: HashMap<String, DateTime<Utc>> =
            stored.into_iter().map(|r| (r.id, r.created_at)).collect();
        if retry {
            // Rows an earlier attempt stored are this batch's own. A retry carries the
            // instants of its first attempt (the recorder fixes them), so each is read
            // from its own partition.
            let unseen: Vec<usize> = chunk
                .iter()
                .copied()
                .filter(|&i| !inserted.contains_key(&out[i].id))
                .collect();
            if !unseen.is_empty() {
                let tenants: Vec<&str> = unseen
                    .iter()
                    .map(|&i| costs[i].tenant_id.as_str())
                    .collect();
                let ids: Vec<&str> = unseen.iter().map(|&i| out[i].id.as_str()).collect();
                let instants: Vec<DateTime<Utc>> =
                    unseen.iter().filter_map(|&i| costs[i].created_at).collect();
                let mut query = cost_records::table
                    .filter(cost_records::tenant_id.eq_any(&tenants))
                    .filter(cost_records::id.eq_any(&ids))
                    .select((cost_records::id, cost_records::created_at))
                    .into_boxed();
                if instants.len() == unseen.len() {
                    query = query.filter(cost_records::created_at.eq_any(&instants));
                }
                inserted.extend(query.load::<(String, DateTime<Utc>)>(self.conn)?);
            }
        }
        let mut skipped = Vec::new();
        for &i in chunk {
            match inserted.get(&out[i].id) {
                Some(&created_at) => out[i].created_at = created_at,
                None => {
                    out[i].inserted = false;
                    skipped.push(i);
                }
            }
        }
        if skipped.is_empty() {
            return Ok(());
        }
        // A skipped row met a request id its tenant had claimed (or, 2^-64 likely, a
        // stored id): the keys name the records they collided with.
        let key = |i: usize| {
            let c = &costs[i];
            (
                c.tenant_id.as_str(),
                c.request_id.as_deref().unwrap_or_default(),
            )
        };
        let (tenants, requests): (Vec<&str>, Vec<&str>) = skipped.iter().map(|&i| key(i)).unzip();
        // Every key of these tenants and request ids; the pairs are matched below.
        use cost_request_keys as k;
        let existing: HashMap<(String, String), (String, DateTime<Utc>)> = k::table
            .filter(k::tenant_id.eq_any(&tenants))
            .filter(k::request_id.eq_any(&requests))
            .select((k::tenant_id, k::request_id, k::record_id, k::created_at))
            .load::<(String, String, String, DateTime<Utc>)>(self.conn)?
            .into_iter()
            .map(|(tenant, request, id, at)| ((tenant, request), (id, at)))
            .collect();
        for i in skipped {
            let (tenant, request) = key(i);
            let (id, at) = existing
                .get(&(tenant.to_owned(), request.to_owned()))
                .cloned()
                .ok_or_else(|| {
                    Error::Conflict(format!(
                        "cost record {:?} (request {request:?}) was not stored: its id is taken \
                         or the record it collided with vanished",
                        out[i].id
                    ))
                })?;
            out[i].id = id;
            out[i].created_at = at;
        }
        Ok(())
    }

    /// Creates the tenant's budget for `scope`, or updates its limits if it exists (one
    /// upsert on tenant, budget type and entity).
    #[doc(alias = "create_or_update_budget")]
    pub fn upsert_budget(
        &mut self,
        tenant_id: &TenantId,
        scope: &BudgetScope,
        limits: &BudgetLimits,
    ) -> Result<CostBudget> {
        let (budget_type, entity_id) = scope.parts();
        validate::optional("entity_id", entity_id, limits::TAG)?;
        for (field, limit) in [
            ("daily_limit_cents", limits.daily_limit_cents),
            ("monthly_limit_cents", limits.monthly_limit_cents),
        ] {
            if let Some(cents) = limit {
                validate::non_negative(field, cents.into())?;
            }
        }
        validate::percent("warn_threshold_pct", limits.warn_threshold_pct)?;
        require_transaction(self.conn)?;
        use cost_budgets::dsl as b;
        Ok(diesel::insert_into(b::cost_budgets)
            .values(NewCostBudget {
                id: ids::cost_budget_id(),
                tenant_id: tenant_id.into(),
                budget_type,
                entity_id: entity_id.map(Into::into),
                daily_limit_cents: limits.daily_limit_cents,
                monthly_limit_cents: limits.monthly_limit_cents,
                warn_threshold_pct: limits.warn_threshold_pct,
                hard_limit_enabled: limits.hard_limit_enabled,
            })
            .on_conflict(on_constraint("uq_cost_budgets_tenant_type_entity"))
            .do_update()
            .set((
                b::daily_limit_cents.eq(excluded(b::daily_limit_cents)),
                b::monthly_limit_cents.eq(excluded(b::monthly_limit_cents)),
                b::warn_threshold_pct.eq(excluded(b::warn_threshold_pct)),
                b::hard_limit_enabled.eq(excluded(b::hard_limit_enabled)),
                b::updated_at.eq(now),
            ))
            .returning(CostBudget::as_returning())
            .get_result(self.conn)?)
    }
}

/// Whether `e` is a unique violation of the per-tenant request id: of the key table's
/// key, or of a partition's or shard's copy of it (`cost_request_keys_pkey_p3`).
fn is_request_conflict(e: &Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as DieselError};
    matches!(e, Error::Database(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info))
        if info.constraint_name().is_some_and(|name| name.starts_with("cost_request_keys_pkey")))
}

/// How many tenants `costs` holds. `order` runs by tenant (within the records with a
/// request id, then within those without), so one tenant a run is kept before the few
/// left are sorted.
fn distinct_tenants(costs: &[CostInput], order: &[usize]) -> usize {
    let mut tenants: Vec<&str> = order.iter().map(|&i| costs[i].tenant_id.as_str()).collect();
    tenants.dedup();
    tenants.sort_unstable();
    tenants.dedup();
    tenants.len()
}

/// The current transaction's `now()`, for rows that take it as `created_at`.
fn transaction_now(conn: &mut PgConnection) -> Result<DateTime<Utc>> {
    Ok(diesel::select(transaction_timestamp()).get_result(conn)?)
}
