//! `CostAnomalyDriver`: the anomaly detector's data access: active budgets, finding and
//! upserting anomalies (one open per key and UTC day), breach history and drift tracking.
//! Every write is one statement that closes its race in SQL.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use diesel::dsl::{case_when, count, sum};
use diesel::prelude::*;
use diesel::sql_types::{Double, Nullable, Text};
use diesel::upsert::{excluded, on_constraint};
use serde::Serialize;

use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::models::rollup::cost_rollup_daily_live as df;
use crate::models::rollup::{blank_to_none, daily_totals, daily_window, TotalsRow};
use crate::models::{
    ids, AnomalyType, BreachType, CostAnomaly, CostBudget, DerivedCause, DriftTracking, EntityType,
    Severity, Totals,
};
use crate::prepared::{Param, Prepared};
use crate::schema::{cost_anomalies as ca, cost_budgets, cost_drift_tracking as dt};
use crate::types::{limits, BudgetScope, EntityKey, TenantId, Tenants};
use crate::validate;

/// Which anomaly: its type and the entity it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnomalyKey {
    /// The rule that found it.
    pub anomaly_type: AnomalyType,
    /// Whose.
    pub entity: EntityKey,
}

/// An anomaly to record, for [`CostAnomalyDriver::upsert_anomaly`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyInput {
    /// Which anomaly.
    pub key: AnomalyKey,
    /// How serious.
    pub severity: Severity,
    /// The observed value, an amount in cents.
    pub current_value_cents: f64,
    /// The expected value, an amount in cents (kept from the first detection of the day).
    pub expected_value_cents: f64,
    /// Deviation from the expected value in percent (finite).
    pub deviation_pct: f64,
    /// The threshold crossed, in percent (finite, not negative; kept from the first
    /// detection of the day).
    pub threshold_pct: f64,
    /// For people.
    pub message: String,
    /// Consecutive days in breach (at least 1).
    pub breach_count: i32,
    /// The derived cause, when one was found.
    pub derived_cause: Option<DerivedCause>,
    /// Anything else (a JSON object).
    pub metadata: Option<serde_json::Value>,
    /// The caller's "now": the anomaly's day is this instant's UTC day.
    pub detected_at: DateTime<Utc>,
}

impl AnomalyInput {
    fn validate(&self) -> Result<()> {
        entity(&self.key.entity)?;
        validate::amount("current_value_cents", self.current_value_cents)?;
        validate::amount("expected_value_cents", self.expected_value_cents)?;
        validate::finite("deviation_pct", self.deviation_pct)?;
        validate::finite("threshold_pct", self.threshold_pct)?;
        if self.threshold_pct < 0.0 {
            return Err(Error::invalid("threshold_pct", "must not be negative"));
        }
        validate::text("message", &self.message)?;
        if self.breach_count < 1 {
            return Err(Error::invalid("breach_count", "must be at least 1"));
        }
        if let Some(m) = &self.metadata {
            if !m.is_object() {
                return Err(Error::invalid("metadata", "must be a JSON object"));
            }
            validate::json("metadata", m)?;
        }
        validate::instant("detected_at", self.detected_at)
    }
}

/// One open anomaly per tenant, key and UTC day (see the file).
const UPSERT: &str = include_str!("anomaly/upsert_anomaly.sql");

/// One day's breach of a spike rule, for [`CostAnomalyDriver::insert_breach_history`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreachInput {
    /// Whose.
    pub entity: EntityKey,
    /// Which rule.
    pub breach_type: BreachType,
    /// The UTC day.
    pub breach_date: NaiveDate,
    /// Deviation from the baseline in percent (finite).
    pub deviation_pct: f64,
    /// Today's value, an amount in cents.
    pub current_value_cents: f64,
    /// The baseline, an amount in cents.
    pub baseline_value_cents: f64,
}

impl BreachInput {
    fn validate(&self) -> Result<()> {
        entity(&self.entity)?;
        validate::finite("deviation_pct", self.deviation_pct)?;
        validate::amount("current_value_cents", self.current_value_cents)?;
        validate::amount("baseline_value_cents", self.baseline_value_cents)
    }

    /// The unique key's order (entity, rule, day), which concurrent writers lock in.
    fn key(&self) -> (&str, Option<&str>, &str, NaiveDate) {
        (
            self.entity.entity_type.as_str(),
            self.entity.id(),
            self.breach_type.as_str(),
            self.breach_date,
        )
    }
}

/// One day's drift observation, for [`CostAnomalyDriver::upsert_drift_tracking`] and
/// [`CostAnomalyDriver::update_drift_tracking`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftObservation {
    /// The 7-day rolling average, an amount in cents.
    pub rolling_avg_cents: f64,
    /// The baseline average, an amount in cents.
    pub baseline_avg_cents: f64,
    /// Drift in percent (finite).
    pub drift_pct: f64,
    /// The UTC day of the observation.
    pub today: NaiveDate,
}

impl DriftObservation {
    fn validate(&self) -> Result<()> {
        validate::amount("rolling_avg_cents", self.rolling_avg_cents)?;
        validate::amount("baseline_avg_cents", self.baseline_avg_cents)?;
        validate::finite("drift_pct", self.drift_pct)
    }
}

fn entity(key: &EntityKey) -> Result<()> {
    validate::optional("entity_id", key.id(), limits::TAG)
}

/// Which column names an entity of the spike rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum EntityColumn {
    /// `user_id`.
    User,
    /// `feature_tag`.
    Feature,
}

/// Spend of one entity (a user or feature tag).
#[derive(Debug, Clone, PartialEq, Serialize, QueryableByName)]
pub struct EntitySpend {
    /// The user id or feature tag.
    #[diesel(sql_type = Text)]
    pub entity: String,
    /// Cents.
    #[diesel(sql_type = Double)]
    pub cents: f64,
}

/// A tenant's calls of one UTC day, feature tag and user, from
/// [`CostAnomalyDriver::fetch_days`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayRow {
    /// The tenant.
    pub tenant_id: String,
    /// The UTC day.
    pub day: NaiveDate,
    /// The feature tag (`None`: calls without one).
    pub feature_tag: Option<String>,
    /// The user (`None`: calls without one).
    pub user_id: Option<String>,
    /// The calls' sums.
    pub totals: Totals,
}

/// A value today and yesterday (UTC days); `None` for a day without records.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, QueryableByName)]
pub struct DayComparison {
    /// Today.
    #[diesel(sql_type = Nullable<Double>)]
    pub today: Option<f64>,
    /// Yesterday.
    #[diesel(sql_type = Nullable<Double>)]
    pub yesterday: Option<f64>,
}

/// How today's spend is spread over feature tags.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, QueryableByName)]
pub struct FeatureConcentration {
    /// All of the tenant's spend today, tagged or not.
    #[diesel(sql_type = Double)]
    pub total_cents: f64,
    /// The spend of the feature tag that spent most today (0 without tagged spend).
    #[diesel(sql_type = Double)]
    pub top_feature_cents: f64,
}

/// Midnight UTC starting `day`.
fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// `[from, to]` as instants `[from 00:00, to + 1 00:00)`; refuses a reversed range.
fn days(from: NaiveDate, to: NaiveDate) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    if from > to {
        return Err(Error::invalid(
            "window",
            format!("the first day ({from}) is after the last ({to})"),
        ));
    }
    let end = to
        .succ_opt()
        .ok_or_else(|| Error::invalid("window", "the last day has no next day"))?;
    Ok((midnight(from), midnight(end)))
}

/// How many days in a row up to and including `today` are in `days` (distinct days,
/// newest first): today, the day before, … for as long as each is there.
pub(crate) fn run_ending(today: NaiveDate, days: impl IntoIterator<Item = NaiveDate>) -> i32 {
    days.into_iter()
        .zip(today.iter_days().rev())
        .take_while(|(day, expected)| day == expected)
        .count() as i32
}

/// A rollup row's sums as stored: requests, retries, input and output tokens, cents.
type RolledRow = (i64, i64, i64, i64, f64);

/// The tenant's daily rollup rows of the UTC days `from..=to`, refusing a reversed range.
fn tags(tenant_id: &str, from: NaiveDate, to: NaiveDate) -> Result<daily_window<'_>> {
    days(from, to)?;
    Ok(daily_window(tenant_id, from, to))
}

/// One UTC day's calls of a budget scope: what the cause comparisons are made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DayActivity {
    /// Calls.
    pub calls: i64,
    /// Calls that were retries.
    pub retried: i64,
    /// Prompt (`input_tokens`) tokens of all calls.
    pub prompt_tokens: i64,
}

impl DayActivity {
    /// `total` per call; `None` for a day without calls.
    fn per_call(&self, total: i64) -> Option<f64> {
        (self.calls > 0).then(|| total as f64 / self.calls as f64)
    }
}

/// A scope's activity today and yesterday, read once for every cause comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ActivityComparison {
    /// The UTC day of "today".
    pub today: DayActivity,
    /// The day before.
    pub yesterday: DayActivity,
}

impl ActivityComparison {
    fn compare(&self, f: impl Fn(&DayActivity) -> Option<f64>) -> DayComparison {
        DayComparison {
            today: f(&self.today),
            yesterday: f(&self.yesterday),
        }
    }

    /// The share of retried calls.
    pub fn retry_share(&self) -> DayComparison {
        self.compare(|d| d.per_call(d.retried))
    }

    /// The average prompt size.
    pub fn prompt_size(&self) -> DayComparison {
        self.compare(|d| d.per_call(d.prompt_tokens))
    }

    /// The number of calls (0, not `None`, for a day without).
    pub fn requests(&self) -> DayComparison {
        self.compare(|d| Some(d.calls as f64))
    }
}

/// Data access of the cost-anomaly detector. Writes refuse to run outside the caller's
/// transaction and never commit.
pub struct CostAnomalyDriver<'c> {
    conn: &'c mut PgConnection,
}

impl<'c> CostAnomalyDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        CostAnomalyDriver { conn }
    }

    /// Each user's or feature tag's average daily spend over the UTC days `from..=to`,
    /// counting only the days the entity had records (an average over active days);
    /// entities without spend are left out. By entity.
    pub fn fetch_entity_baseline(
        &mut self,
        tenant_id: &TenantId,
        column: EntityColumn,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<EntitySpend>> {
        let rows: Vec<(String, Option<f64>, i64)> = match column {
            EntityColumn::User => tags(tenant_id, from, to)?
                .filter(df::user_id.ne(""))
                .group_by(df::user_id)
                .select((
                    df::user_id,
                    sum(df::cost_cents),
                    count(df::day).aggregate_distinct(),
                ))
                .order(df::user_id)
                .load(self.conn)?,
            EntityColumn::Feature => tags(tenant_id, from, to)?
                .filter(df::feature_tag.ne(""))
                .group_by(df::feature_tag)
                .select((
                    df::feature_tag,
                    sum(df::cost_cents),
                    count(df::day).aggregate_distinct(),
                ))
                .order(df::feature_tag)
                .load(self.conn)?,
        };
        Ok(rows
            .into_iter()
            .filter_map(|(entity, cents, days)| {
                let cents = cents.filter(|c| *c > 0.0)?;
                Some(EntitySpend {
                    entity,
                    cents: cents / days as f64,
                })
            })
            .collect())
    }

    /// Each user's or feature tag's spend on the UTC day `today` (the original had no
    /// upper bound). By entity.
    pub fn fetch_entity_today_spend(
        &mut self,
        tenant_id: &TenantId,
        column: EntityColumn,
        today: NaiveDate,
    ) -> Result<Vec<EntitySpend>> {
        let rows: Vec<(String, Option<f64>)> = match column {
            EntityColumn::User => tags(tenant_id, today, today)?
                .filter(df::user_id.ne(""))
                .group_by(df::user_id)
                .select((df::user_id, sum(df::cost_cents)))
                .order(df::user_id)
                .load(self.conn)?,
            EntityColumn::Feature => tags(tenant_id, today, today)?
                .filter(df::feature_tag.ne(""))
                .group_by(df::feature_tag)
                .select((df::feature_tag, sum(df::cost_cents)))
                .order(df::feature_tag)
                .load(self.conn)?,
        };
        Ok(rows
            .into_iter()
            .map(|(entity, cents)| EntitySpend {
                entity,
                cents: cents.unwrap_or(0.0),
            })
            .collect())
    }
    /// The tenant's average daily spend over the UTC days `from..=to`, over the days that
    /// had records; `None` without spend.
    pub fn fetch_tenant_baseline(
        &mut self,
        tenant_id: &TenantId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Option<f64>> {
        let (cents, days): (Option<f64>, i64) = tags(tenant_id, from, to)?
            .select((sum(df::cost_cents), count(df::day).aggregate_distinct()))
            .get_result(self.conn)?;
        Ok(cents.map(|c| c / days as f64).filter(|a| *a > 0.0))
    }

    /// The tenant's spend on the UTC day `today` (0 without records).
    pub fn fetch_tenant_today_spend(
        &mut self,
        tenant_id: &TenantId,
        today: NaiveDate,
    ) -> Result<f64> {
        self.fetch_daily_spend(tenant_id, today, &BudgetScope::Tenant)
    }

    /// The tenant's spend over the UTC days `from..=to` divided by **7**, whatever the
    /// range (the original's 7-day rolling average; pass a 7-day range); 0 without spend.
    pub fn fetch_rolling_avg(
        &mut self,
        tenant_id: &TenantId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<f64> {
        Ok(self
            .scope_totals(tenant_id, from, to, &BudgetScope::Tenant)?
            .cost_cents
            / 7.0)
    }

    /// The tenant's average daily spend over the UTC days `from..=to`, dividing by the days
    /// that had records (as [`fetch_tenant_baseline`](Self::fetch_tenant_baseline)); 0
    /// without spend.
    pub fn fetch_baseline_avg(
        &mut self,
        tenant_id: &TenantId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<f64> {
        Ok(self
            .fetch_tenant_baseline(tenant_id, from, to)?
            .unwrap_or(0.0))
    }

    /// The totals of a budget's scope per UTC day of `from..=to` (days with calls), from
    /// the daily rollup.
    fn scope_days(
        &mut self,
        tenant_id: &str,
        from: NaiveDate,
        to: NaiveDate,
        scope: &BudgetScope,
    ) -> Result<BTreeMap<NaiveDate, Totals>> {
        let mut query = tags(tenant_id, from, to)?
            .group_by(df::day)
            .select((df::day, daily_totals()))
            .into_boxed();
        match scope {
            BudgetScope::Tenant => {}
            BudgetScope::Feature(tag) => {
                validate::required("scope", tag, limits::TAG)?;
                query = query.filter(df::feature_tag.eq(tag));
            }
            BudgetScope::User(user) => {
                validate::required("scope", user, limits::TAG)?;
                query = query.filter(df::user_id.eq(user));
            }
        }
        let rows: Vec<(NaiveDate, TotalsRow)> = query.load(self.conn)?;
        Ok(rows.into_iter().map(|(day, t)| (day, t.into())).collect())
    }

    /// The totals of a budget's scope over the UTC days `from..=to`.
    fn scope_totals(
        &mut self,
        tenant_id: &str,
        from: NaiveDate,
        to: NaiveDate,
        scope: &BudgetScope,
    ) -> Result<Totals> {
        let mut sum = Totals::default();
        for totals in self.scope_days(tenant_id, from, to, scope)?.into_values() {
            sum += totals;
        }
        Ok(sum)
    }

    /// The spend of a budget's scope on the UTC day `today` (a user's, a feature tag's, or
    /// the whole tenant's; the original counted the whole tenant for a feature or user
    /// budget without an id).
    pub fn fetch_daily_spend(
        &mut self,
        tenant_id: &TenantId,
        today: NaiveDate,
        scope: &BudgetScope,
    ) -> Result<f64> {
        Ok(self
            .scope_totals(tenant_id, today, today, scope)?
            .cost_cents)
    }

    /// The spend of a budget's scope from the first of `today`'s month through `today`
    /// (UTC days).
    pub fn fetch_monthly_spend(
        &mut self,
        tenant_id: &TenantId,
        today: NaiveDate,
        scope: &BudgetScope,
    ) -> Result<f64> {
        let first = today.with_day(1).expect("every month has a first day");
        Ok(self
            .scope_totals(tenant_id, first, today, scope)?
            .cost_cents)
    }

    /// The scope's calls, retried calls and prompt tokens today and yesterday: one read
    /// for [`ActivityComparison`]'s three comparisons.
    pub fn fetch_activity_comparison(
        &mut self,
        tenant_id: &TenantId,
        today: NaiveDate,
        scope: &BudgetScope,
    ) -> Result<ActivityComparison> {
        let yesterday = today
            .pred_opt()
            .ok_or_else(|| Error::invalid("today", "has no day before it"))?;
        // Both days in one read.
        let days = self.scope_days(tenant_id, yesterday, today, scope)?;
        let activity = |day| {
            let totals = days.get(&day).copied().unwrap_or_default();
            DayActivity {
                calls: totals.requests,
                retried: totals.retries,
                prompt_tokens: totals.input_tokens,
            }
        };
        Ok(ActivityComparison {
            today: activity(today),
            yesterday: activity(yesterday),
        })
    }

    /// The share of retried calls (`is_retry`) today and yesterday, for the scope.
    pub fn fetch_retry_comparison(
        &mut self,
        tenant_id: &TenantId,
        today: NaiveDate,
        scope: &BudgetScope,
    ) -> Result<DayComparison> {
        Ok(self
            .fetch_activity_comparison(tenant_id, today, scope)?
            .retry_share())
    }

    /// The average prompt size (`input_tokens`) today and yesterday, for the scope.
    pub fn fetch_prompt_comparison(
        &mut self,
        tenant_id: &TenantId,
        today: NaiveDate,
        scope: &BudgetScope,
    ) -> Result<DayComparison> {
        Ok(self
            .fetch_activity_comparison(tenant_id, today, scope)?
            .prompt_size())
    }

    /// The number of calls today and yesterday (0, not `None`, for a day without), for the
    /// scope.
    pub fn fetch_request_comparison(
        &mut self,
        tenant_id: &TenantId,
        today: NaiveDate,
        scope: &BudgetScope,
    ) -> Result<DayComparison> {
        Ok(self
            .fetch_activity_comparison(tenant_id, today, scope)?
            .requests())
    }

    /// Today's spend of the whole tenant and of its top feature tag (the original's
    /// statement never ran).
    pub fn fetch_feature_concentration(
        &mut self,
        tenant_id: &TenantId,
        today: NaiveDate,
    ) -> Result<FeatureConcentration> {
        let per_feature: Vec<(String, Option<f64>)> = tags(tenant_id, today, today)?
            .group_by(df::feature_tag)
            .select((df::feature_tag, sum(df::cost_cents)))
            .load(self.conn)?;
        let cents = |(_, c): &(String, Option<f64>)| c.unwrap_or(0.0);
        Ok(FeatureConcentration {
            total_cents: per_feature.iter().map(cents).sum(),
            top_feature_cents: per_feature
                .iter()
                .filter(|(tag, _)| !tag.is_empty())
                .map(cents)
                .fold(0.0, f64::max),
        })
    }

    /// Whether the entity already has a breach of `breach_type` recorded on `today`.
    pub fn fetch_breach_exists_today(
        &mut self,
        tenant_id: &TenantId,
        key: &EntityKey,
        breach_type: BreachType,
        today: NaiveDate,
    ) -> Result<bool> {
        entity(key)?;
        use crate::schema::cost_breach_history::dsl as b;
        let q = b::cost_breach_history
            .filter(b::tenant_id.eq(tenant_id))
            .filter(b::entity_type.eq(key.entity_type))
            .filter(b::entity_id.is_not_distinct_from(key.id()))
            .filter(b::breach_type.eq(breach_type))
            .filter(b::breach_date.eq(today));
        Ok(diesel::select(diesel::dsl::exists(q)).get_result(self.conn)?)
    }

    /// Records the entity's breach of `input.breach_date` (an upsert on tenant, entity,
    /// rule and day: concurrent detectors leave one row). Returns whether the row is new.
    pub fn insert_breach_history(
        &mut self,
        tenant_id: &TenantId,
        input: &BreachInput,
    ) -> Result<bool> {
        input.validate()?;
        require_transaction(self.conn)?;
        let id = ids::breach_history_id();
        let stored = self.upsert_breaches(vec![(tenant_id, input, id.clone())])?;
        Ok(stored.first() == Some(&id))
    }

    /// Records many breaches in one statement, each as
    /// [`insert_breach_history`](Self::insert_breach_history) records one; keys are
    /// written in one global order, so concurrent detectors do not deadlock. Returns how
    /// many rows were written.
    pub fn insert_breach_histories(
        &mut self,
        breaches: &[(&TenantId, &BreachInput)],
    ) -> Result<usize> {
        for (_, input) in breaches {
            input.validate()?;
        }
        require_transaction(self.conn)?;
        let mut rows: Vec<_> = breaches
            .iter()
            .map(|&(tenant_id, input)| (tenant_id, input, ids::breach_history_id()))
            .collect();
        rows.sort_by(|(t1, x, _), (t2, y, _)| (t1, x.key()).cmp(&(t2, y.key())));
        Ok(self.upsert_breaches(rows)?.len())
    }

    /// The one upsert of breaches (validated, inside a transaction): a second record of the
    /// same day keeps the first's id, baseline and creation and takes the new deviation and
    /// value. Returns the stored ids, which tell a new row (its own id) from an old one.
    fn upsert_breaches(
        &mut self,
        rows: Vec<(&TenantId, &BreachInput, String)>,
    ) -> Result<Vec<String>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        use crate::schema::cost_breach_history::dsl as b;
        let values: Vec<_> = rows
            .into_iter()
            .map(|(tenant_id, input, id)| {
                (
                    b::id.eq(id),
                    b::tenant_id.eq(tenant_id),
                    b::entity_type.eq(input.entity.entity_type),
                    b::entity_id.eq(input.entity.id()),
                    b::breach_type.eq(input.breach_type),
                    b::breach_date.eq(input.breach_date),
                    b::deviation_pct.eq(input.deviation_pct + 0.0),
                    b::current_value_cents.eq(input.current_value_cents + 0.0),
                    b::baseline_value_cents.eq(input.baseline_value_cents + 0.0),
                )
            })
            .collect();
        Ok(diesel::insert_into(b::cost_breach_history)
            .values(values)
            .on_conflict(on_constraint("uq_breach_per_entity_day"))
            .do_update()
            .set((
                b::deviation_pct.eq(excluded(b::deviation_pct)),
                b::current_value_cents.eq(excluded(b::current_value_cents)),
            ))
            .returning(b::id)
            .get_results(self.conn)?)
    }

    /// The days of `[from, to]` on which each entity of these tenants breached
    /// `breach_type`: (tenant, entity, day), by tenant, entity and day, in one statement
    /// served by the tenant-led unique key. The detector counts its breach runs from it.
    pub fn fetch_breach_days(
        &mut self,
        tenant_ids: &[&TenantId],
        breach_type: BreachType,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(String, EntityKey, NaiveDate)>> {
        for tenant in tenant_ids {
            validate::required("tenant_id", tenant, limits::TENANT_ID)?;
        }
        days(from, to)?;
        use crate::schema::cost_breach_history::dsl as b;
        let rows: Vec<(String, EntityType, Option<String>, NaiveDate)> = b::cost_breach_history
            .filter(b::tenant_id.eq_any(tenant_ids))
            .filter(b::breach_type.eq(breach_type))
            .filter(b::breach_date.between(from, to))
            .select((b::tenant_id, b::entity_type, b::entity_id, b::breach_date))
            .order((b::tenant_id, b::entity_type, b::entity_id, b::breach_date))
            .load(self.conn)?;
        Ok(rows
            .into_iter()
            .map(|(tenant, entity_type, entity_id, day)| {
                (
                    tenant,
                    EntityKey {
                        entity_type,
                        entity_id,
                    },
                    day,
                )
            })
            .collect())
    }

    /// How many consecutive days up to and including `today` the entity breached
    /// `breach_type`, counted inside the window `[today − 7 days, today]`: 0 without a
    /// breach today, 2 for today and yesterday, and so on, at most 8 however long the run
    /// (the original always answered 1).
    pub fn fetch_consecutive_breaches(
        &mut self,
        tenant_id: &TenantId,
        key: &EntityKey,
        breach_type: BreachType,
        today: NaiveDate,
    ) -> Result<i32> {
        entity(key)?;
        use crate::schema::cost_breach_history::dsl as b;
        let week_before = today - chrono::Duration::days(7);
        let days: Vec<NaiveDate> = b::cost_breach_history
            .filter(b::tenant_id.eq(tenant_id))
            .filter(b::entity_type.eq(key.entity_type))
            .filter(b::entity_id.is_not_distinct_from(key.id()))
            .filter(b::breach_type.eq(breach_type))
            .filter(b::breach_date.between(week_before, today))
            .select(b::breach_date)
            .distinct()
            .order(b::breach_date.desc())
            .load(self.conn)?;
        Ok(run_ending(today, days))
    }

    /// The entity's active drift tracker, if any.
    pub fn fetch_drift_tracking(
        &mut self,
        tenant_id: &TenantId,
        key: &EntityKey,
    ) -> Result<Option<DriftTracking>> {
        entity(key)?;
        Ok(dt::table
            .filter(dt::tenant_id.eq(tenant_id))
            .filter(dt::entity_type.eq(key.entity_type))
            .filter(dt::entity_id.is_not_distinct_from(key.id()))
            .filter(dt::is_active.eq(true))
            .select(DriftTracking::as_select())
            .first(self.conn)
            .optional()?)
    }

    /// Counts a drift day (see the statement's rules: yesterday's tracker goes up by one,
    /// today's stays, a gap or an inactive tracker starts again at 1) and returns the
    /// count. One upsert on the entity: it re-activates a reset tracker, and concurrent
    /// detectors leave one row.
    pub fn upsert_drift_tracking(
        &mut self,
        tenant_id: &TenantId,
        key: &EntityKey,
        observation: &DriftObservation,
    ) -> Result<i32> {
        entity(key)?;
        observation.validate()?;
        require_transaction(self.conn)?;
        use crate::schema::cost_drift_tracking as d;
        let today = observation.today;
        let yesterday = today
            .pred_opt()
            .ok_or_else(|| Error::invalid("today", "has no day before it"))?;
        // Checked today already, or yesterday: the run goes on.
        let checked_today = || d::is_active.and(d::last_check_date.eq(today));
        let checked_yesterday = || d::is_active.and(d::last_check_date.eq(yesterday));
        // `+ 0.0` stores -0 as 0.
        Ok(diesel::insert_into(d::table)
            .values((
                d::id.eq(ids::drift_tracking_id()),
                d::tenant_id.eq(tenant_id),
                d::entity_type.eq(key.entity_type),
                d::entity_id.eq(key.id()),
                d::rolling_7d_avg_cents.eq(observation.rolling_avg_cents + 0.0),
                d::baseline_7d_avg_cents.eq(observation.baseline_avg_cents + 0.0),
                d::drift_pct.eq(observation.drift_pct + 0.0),
                d::drift_days_count.eq(1),
                d::first_drift_date.eq(today),
                d::last_check_date.eq(today),
                d::is_active.eq(true),
            ))
            .on_conflict(on_constraint("uq_drift_tracker_per_entity"))
            .do_update()
            .set((
                d::drift_days_count.eq(case_when(checked_today(), d::drift_days_count)
                    .when(checked_yesterday(), d::drift_days_count + 1)
                    .otherwise(1)),
                d::first_drift_date.eq(case_when(
                    checked_today().or(checked_yesterday()),
                    d::first_drift_date,
                )
                .otherwise(today)),
                d::rolling_7d_avg_cents.eq(excluded(d::rolling_7d_avg_cents)),
                d::baseline_7d_avg_cents.eq(excluded(d::baseline_7d_avg_cents)),
                d::drift_pct.eq(excluded(d::drift_pct)),
                d::last_check_date.eq(today),
                d::is_active.eq(true),
                d::updated_at.eq(diesel::dsl::now),
            ))
            .returning(d::drift_days_count)
            .get_result(self.conn)?)
    }

    /// Sets the tenant's tracker `id` to `drift_days_count` with the observation's values.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the tenant has no tracker `id` (the original updated any
    /// tenant's).
    pub fn update_drift_tracking(
        &mut self,
        tenant_id: &TenantId,
        id: &str,
        drift_days_count: i32,
        observation: &DriftObservation,
    ) -> Result<DriftTracking> {
        validate::required("id", id, limits::DETECTOR_ROW_ID)?;
        observation.validate()?;
        if drift_days_count < 1 {
            return Err(Error::invalid("drift_days_count", "must be at least 1"));
        }
        require_transaction(self.conn)?;
        diesel::update(
            dt::table
                .filter(dt::tenant_id.eq(tenant_id))
                .filter(dt::id.eq(id)),
        )
        .set((
            dt::rolling_7d_avg_cents.eq(observation.rolling_avg_cents + 0.0),
            dt::baseline_7d_avg_cents.eq(observation.baseline_avg_cents + 0.0),
            dt::drift_pct.eq(observation.drift_pct + 0.0),
            dt::drift_days_count.eq(drift_days_count),
            dt::last_check_date.eq(observation.today),
            dt::updated_at.eq(diesel::dsl::now),
        ))
        .returning(DriftTracking::as_returning())
        .get_result(self.conn)
        .optional()?
        .ok_or_else(|| Error::NotFound {
            entity: "drift tracker",
            id: id.into(),
        })
    }

    /// Deactivates the entity's active tracker (drift ended); returns how many were.
    pub fn reset_drift_tracking(&mut self, tenant_id: &TenantId, key: &EntityKey) -> Result<usize> {
        entity(key)?;
        require_transaction(self.conn)?;
        Ok(diesel::update(
            dt::table
                .filter(dt::tenant_id.eq(tenant_id))
                .filter(dt::entity_type.eq(key.entity_type))
                .filter(dt::entity_id.is_not_distinct_from(key.id()))
                .filter(dt::is_active.eq(true)),
        )
        .set((dt::is_active.eq(false), dt::updated_at.eq(diesel::dsl::now)))
        .execute(self.conn)?)
    }

    /// The totals of every tenant (or one) per UTC day, feature tag and user over the days
    /// `from..=to`, in one statement: what every spend input of the detector is summed
    /// from. Only days with calls; by tenant, day, tag and user.
    pub fn fetch_days(
        &mut self,
        tenants: Tenants<'_>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DayRow>> {
        days(from, to)?;
        // The rows as stored, one per slot, summed here: cheaper than grouping them in the
        // server, which sums bigints as decimals.
        let mut query = df::table
            .filter(df::day.between(from, to))
            .select((
                df::tenant_id,
                df::day,
                df::feature_tag,
                df::user_id,
                (
                    df::requests,
                    df::retries,
                    df::input_tokens,
                    df::output_tokens,
                    df::cost_cents,
                ),
            ))
            .into_boxed();
        if let Tenants::One(tenant) = tenants {
            query = query.filter(df::tenant_id.eq(tenant));
        }
        let rows: Vec<(String, NaiveDate, String, String, RolledRow)> = query.load(self.conn)?;
        let mut days: BTreeMap<(String, NaiveDate, String, String), Totals> = BTreeMap::new();
        for (tenant_id, day, tag, user, (requests, retries, input, output, cents)) in rows {
            *days.entry((tenant_id, day, tag, user)).or_default() += Totals {
                requests,
                retries,
                input_tokens: input,
                output_tokens: output,
                cost_cents: cents,
            };
        }
        Ok(days
            .into_iter()
            .map(|((tenant_id, day, tag, user), totals)| DayRow {
                tenant_id,
                day,
                feature_tag: blank_to_none(tag),
                user_id: blank_to_none(user),
                totals,
            })
            .collect())
    }

    /// The active budgets of one tenant or all, by tenant, type and entity.
    pub fn fetch_active_budgets_of(&mut self, tenants: Tenants<'_>) -> Result<Vec<CostBudget>> {
        use cost_budgets::dsl as b;
        let mut query = b::cost_budgets
            .filter(b::is_active.eq(true))
            .order((
                b::tenant_id,
                b::budget_type,
                b::entity_id.asc().nulls_first(),
                b::id,
            ))
            .select(CostBudget::as_select())
            .into_boxed();
        if let Tenants::One(tenant) = tenants {
            query = query.filter(b::tenant_id.eq(tenant));
        }
        Ok(query.load(self.conn)?)
    }

    /// Deactivates the active drift trackers of these tenants' whole spend (entity type
    /// `tenant`, the tenant's own id as entity, as the detector keys them) in one
    /// statement: drift ended for each. Returns how many were.
    pub fn reset_tenant_drift(&mut self, tenant_ids: &[&TenantId]) -> Result<usize> {
        for tenant in tenant_ids {
            validate::required("tenant_id", tenant, limits::TENANT_ID)?;
        }
        require_transaction(self.conn)?;
        if tenant_ids.is_empty() {
            return Ok(0);
        }
        Ok(diesel::update(
            dt::table
                .filter(dt::tenant_id.eq_any(tenant_ids))
                .filter(dt::entity_type.eq(EntityType::Tenant))
                .filter(dt::entity_id.eq(dt::tenant_id.nullable()))
                .filter(dt::is_active.eq(true)),
        )
        .set((dt::is_active.eq(false), dt::updated_at.eq(diesel::dsl::now)))
        .execute(self.conn)?)
    }

    /// The tenant's active budgets, by type and entity.
    pub fn fetch_active_budgets(&mut self, tenant_id: &TenantId) -> Result<Vec<CostBudget>> {
        use cost_budgets::dsl as b;
        Ok(b::cost_budgets
            .filter(b::tenant_id.eq(tenant_id))
            .filter(b::is_active.eq(true))
            .order((b::budget_type, b::entity_id.asc().nulls_first(), b::id))
            .select(CostBudget::as_select())
            .load(self.conn)?)
    }

    /// The tenant's open anomaly with this key detected at or after `since`, the newest if
    /// there are several.
    #[doc(alias = "find_existing_anomaly")]
    pub fn fetch_open_anomaly(
        &mut self,
        tenant_id: &TenantId,
        key: &AnomalyKey,
        since: DateTime<Utc>,
    ) -> Result<Option<CostAnomaly>> {
        entity(&key.entity)?;
        validate::instant("since", since)?;
        Ok(ca::table
            .filter(ca::tenant_id.eq(tenant_id))
            .filter(ca::anomaly_type.eq(key.anomaly_type))
            .filter(ca::entity_type.eq(key.entity.entity_type))
            .filter(ca::entity_id.is_not_distinct_from(key.entity.id()))
            .filter(ca::detected_at.ge(since))
            .filter(ca::resolved.eq(false))
            .order((ca::detected_at.desc(), ca::id.desc()))
            .select(CostAnomaly::as_select())
            .first(self.conn)
            .optional()?)
    }

    /// Records the anomaly: one open row per tenant, key and UTC day of `detected_at`
    /// (see [`AnomalyInput`]). Returns the whole stored row.
    pub fn upsert_anomaly(
        &mut self,
        tenant_id: &TenantId,
        input: &AnomalyInput,
    ) -> Result<CostAnomaly> {
        input.validate()?;
        require_transaction(self.conn)?;
        let id = ids::cost_anomaly_id();
        Ok(Prepared {
            sql: UPSERT,
            params: &[
                Param::Text(&id),
                Param::Text(tenant_id),
                Param::Text(input.key.anomaly_type.as_str()),
                Param::Text(input.severity.as_str()),
                Param::Text(input.key.entity.entity_type.as_str()),
                Param::OptText(input.key.entity.id()),
                Param::Float(input.current_value_cents),
                Param::Float(input.expected_value_cents),
                Param::Float(input.deviation_pct),
                Param::Float(input.threshold_pct),
                Param::Text(&input.message),
                Param::Int4(input.breach_count),
                Param::OptText(input.derived_cause.map(|c| c.as_str())),
                Param::OptJson(input.metadata.as_ref()),
                Param::Instant(&input.detected_at),
            ],
        }
        .get_result(self.conn)?)
    }
}
