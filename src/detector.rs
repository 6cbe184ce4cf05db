//! The cost-anomaly detector: the original engine's four rules over [`CostAnomalyDriver`],
//! for one tenant and one caller-supplied instant.
//!
//! - **Absolute spike**, per user, per feature tag and for the whole tenant: today's spend
//!   against the average active day of the 13 days ending the day before yesterday; a
//!   ratio of at least 1.40 is a breach, and 2 breach days in a row are an anomaly.
//! - **Sustained drift**: the 7-day rolling average (the last 7 days, today included,
//!   divided by 7) against the average active day of days −28 to −8; a ratio of at least
//!   1.25 counts a drift day, 3 in a row are an anomaly, and a lower ratio ends the drift.
//! - **Budget warning** and **budget exceeded**: each active budget's daily and monthly
//!   spend against its limits.
//!
//! Spikes and drift get a derived cause (retry loop, prompt growth, feature surge,
//! traffic growth, or unknown) and a severity band. "Today" is the UTC day of the
//! caller's `now`, which also stamps `detected_at`: replaying past days gives the rows
//! running on those days would have.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use diesel::PgConnection;
use serde::Serialize;

use crate::drivers::anomaly::run_ending;
use crate::drivers::{
    AnomalyInput, AnomalyKey, BreachInput, CostAnomalyDriver, DriftObservation, EntityColumn,
};
use crate::error::{Error, Result};
use crate::models::{
    AnomalyType, BreachType, BudgetType, CostAnomaly, DerivedCause, EntityType, Severity, Totals,
};
use crate::replica::Reads;
use crate::types::{EntityKey, TenantId, Tenants};

/// The detector's thresholds; `Default` is the original engine's constants.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectorConfig {
    /// Today ÷ baseline at or above this is a spike breach (1.40).
    pub spike_ratio: f64,
    /// Breach days in a row for a spike anomaly (2).
    pub spike_days: i32,
    /// Rolling ÷ baseline average at or above this is a drift day (1.25).
    pub drift_ratio: f64,
    /// Drift days in a row for a drift anomaly (3).
    pub drift_days: i32,
    /// The spike baseline ends 2 days ago and starts this many days ago (14).
    pub lookback_days: i64,
    /// Retry share growth over yesterday for a retry loop (1.5).
    pub retry_growth: f64,
    /// Average prompt growth over yesterday for prompt growth (1.3).
    pub prompt_growth: f64,
    /// One feature's share of the tenant's spend for a feature surge (0.6).
    pub feature_share: f64,
    /// Call count growth over yesterday for traffic growth (1.3).
    pub request_growth: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            spike_ratio: 1.40,
            spike_days: 2,
            drift_ratio: 1.25,
            drift_days: 3,
            lookback_days: 14,
            retry_growth: 1.5,
            prompt_growth: 1.3,
            feature_share: 0.6,
            request_growth: 1.3,
        }
    }
}

/// The severity of a deviation in percent: HIGH from 40, MEDIUM from 25, else LOW.
pub fn severity_band(deviation_pct: f64) -> Severity {
    if deviation_pct >= 40.0 {
        Severity::High
    } else if deviation_pct >= 25.0 {
        Severity::Medium
    } else {
        Severity::Low
    }
}

/// `value` as a percentage with one decimal (no sign) that never rounds up to `ceiling`
/// when `value` is below it: a budget used to 99.96 % reads `99.9`, not `100.0`, the
/// figure at which it would be exceeded.
pub fn percent_text(value: f64, ceiling: Option<f64>) -> String {
    let mut tenths = (value * 10.0).round();
    if let Some(ceiling) = ceiling {
        if value < ceiling && tenths >= ceiling * 10.0 {
            tenths = (ceiling * 10.0).ceil() - 1.0;
        }
    }
    format!("{:.1}", tenths / 10.0)
}

/// Runs the rules for one tenant; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct AnomalyDetector {
    /// Thresholds.
    pub config: DetectorConfig,
}

/// A scope of the rules: its level (`None` the whole tenant, else users or feature tags),
/// its tenant and its entity (`None` for the whole tenant).
type ScopeKey = (Option<EntityColumn>, TenantId, Option<String>);

/// Every scope's totals per UTC day over the days the rules look at, read in one
/// statement for all the tenants of a run.
struct DayBook {
    days: BTreeMap<ScopeKey, BTreeMap<NaiveDate, Totals>>,
}

impl DayBook {
    fn load(
        d: &mut CostAnomalyDriver<'_>,
        tenants: Tenants<'_>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Self> {
        let mut days: BTreeMap<ScopeKey, BTreeMap<NaiveDate, Totals>> = BTreeMap::new();
        let mut add = |key: ScopeKey, day: NaiveDate, totals: Totals| {
            *days.entry(key).or_default().entry(day).or_default() += totals;
        };
        // Each row counts for its tenant, its tag and its user.
        for row in d.fetch_days(tenants, from, to)? {
            let tenant = TenantId::stored(row.tenant_id);
            add((None, tenant.clone(), None), row.day, row.totals);
            if row.feature_tag.is_some() {
                let key = (Some(EntityColumn::Feature), tenant.clone(), row.feature_tag);
                add(key, row.day, row.totals);
            }
            if row.user_id.is_some() {
                add(
                    (Some(EntityColumn::User), tenant, row.user_id),
                    row.day,
                    row.totals,
                );
            }
        }
        Ok(DayBook { days })
    }

    /// The scopes of one level (of one tenant, when given), by tenant and entity.
    fn scopes<'a>(
        &'a self,
        level: Option<EntityColumn>,
        tenant: Option<&'a TenantId>,
    ) -> impl Iterator<Item = &'a ScopeKey> {
        // Keys are ordered by level, tenant and entity: the wanted ones are one run.
        let least = || TenantId::stored(String::new());
        let first = (level, tenant.cloned().unwrap_or_else(least), None);
        self.days
            .range(first..)
            .map(|(key, _)| key)
            .take_while(move |k| k.0 == level && tenant.is_none_or(|t| k.1 == *t))
    }

    /// The scope's totals over `from..=to`, and how many of those days had calls.
    fn range(&self, key: &ScopeKey, from: NaiveDate, to: NaiveDate) -> (Totals, i64) {
        let mut sum = Totals::default();
        let mut active = 0;
        for (_, totals) in self
            .days
            .get(key)
            .into_iter()
            .flat_map(|d| d.range(from..=to))
        {
            sum += *totals;
            active += 1;
        }
        (sum, active)
    }

    /// The scope's totals on `day`.
    fn day(&self, key: &ScopeKey, day: NaiveDate) -> Totals {
        self.range(key, day, day).0
    }

    /// The average over the active days of `from..=to`; `None` without spend.
    fn active_day_avg(&self, key: &ScopeKey, from: NaiveDate, to: NaiveDate) -> Option<f64> {
        let (sum, active) = self.range(key, from, to);
        (sum.cost_cents > 0.0).then(|| sum.cost_cents / active as f64)
    }
}

/// A spike breach found today, before its run is known.
struct Breach<'b> {
    scope: &'b ScopeKey,
    input: BreachInput,
}

/// `today + days` (days may be negative).
fn shift(today: NaiveDate, days: i64) -> Result<NaiveDate> {
    today
        .checked_add_signed(Duration::days(days))
        .ok_or_else(|| Error::invalid("now", "too close to the end of the calendar"))
}

/// `num / den` when both are known and the denominator is positive.
fn growth(today: Option<f64>, yesterday: Option<f64>) -> Option<f64> {
    match (today, yesterday) {
        (Some(t), Some(y)) if y > 0.0 => Some(t / y),
        _ => None,
    }
}

/// `total` per call; `None` for a day without calls.
fn per_call(day: &Totals, total: i64) -> Option<f64> {
    (day.requests > 0).then(|| total as f64 / day.requests as f64)
}

impl AnomalyDetector {
    /// A detector with these thresholds.
    pub fn new(config: DetectorConfig) -> Self {
        AnomalyDetector { config }
    }

    /// Runs every rule for `tenant_id` on the UTC day of `now` inside the caller's
    /// transaction, records breaches, drift days and anomalies through the driver, and
    /// returns the anomalies it upserted (spikes, then drift, then budgets).
    ///
    /// # Errors
    /// [`Error::NoTransaction`] outside a transaction; input and database errors.
    pub fn detect(
        &self,
        conn: &mut PgConnection,
        tenant_id: &TenantId,
        now: DateTime<Utc>,
    ) -> Result<Vec<CostAnomaly>> {
        self.run(conn, None, Tenants::One(tenant_id), now)
    }

    /// [`detect`](Self::detect) for every tenant at once, in a fixed number of statements
    /// however many tenants there are: one reads every scope's days from the daily
    /// rollup, one the budgets, one writes all breaches and one reads their runs; only
    /// drift days and the anomalies found take a statement each. Returns the anomalies by
    /// tenant, each tenant's in the order of `detect`.
    ///
    /// # Errors
    /// As [`detect`](Self::detect).
    pub fn detect_all(
        &self,
        conn: &mut PgConnection,
        now: DateTime<Utc>,
    ) -> Result<Vec<CostAnomaly>> {
        self.run(conn, None, Tenants::All, now)
    }

    /// [`detect`](Self::detect) with the spend the rules compare (every scope's days)
    /// read through `spend` (a replica, see [`crate::replica`]); budgets, breach and
    /// drift history are read and written on `conn`, the primary. Spend is then as stale
    /// as `spend.replica_lag()`.
    ///
    /// # Errors
    /// As [`detect`](Self::detect).
    pub fn detect_reading_spend(
        &self,
        conn: &mut PgConnection,
        spend: &mut Reads<'_>,
        tenant_id: &TenantId,
        now: DateTime<Utc>,
    ) -> Result<Vec<CostAnomaly>> {
        self.run(conn, Some(spend), Tenants::One(tenant_id), now)
    }

    /// [`detect_all`](Self::detect_all) with the spend read through `spend`, as
    /// [`detect_reading_spend`](Self::detect_reading_spend) does.
    ///
    /// # Errors
    /// As [`detect`](Self::detect).
    pub fn detect_all_reading_spend(
        &self,
        conn: &mut PgConnection,
        spend: &mut Reads<'_>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CostAnomaly>> {
        self.run(conn, Some(spend), Tenants::All, now)
    }

    fn run(
        &self,
        conn: &mut PgConnection,
        spend: Option<&mut Reads<'_>>,
        tenants: Tenants<'_>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CostAnomaly>> {
        crate::db::require_transaction(conn)?;
        let today = now.date_naive();
        let first_of_month = today.with_day(1).expect("every month has a first day");
        let from = [
            shift(today, -self.config.lookback_days.max(28))?,
            first_of_month,
        ]
        .into_iter()
        .min()
        .expect("two days");
        let spend_conn = match spend {
            Some(reads) => reads.conn(),
            None => &mut *conn,
        };
        let book = DayBook::load(
            &mut CostAnomalyDriver::new(spend_conn),
            tenants,
            from,
            today,
        )?;
        let mut d = CostAnomalyDriver::new(conn);
        let mut found: BTreeMap<String, Vec<CostAnomaly>> = BTreeMap::new();
        for (tenant, anomaly) in self.spikes(&mut d, &book, now)? {
            found.entry(tenant).or_default().push(anomaly);
        }
        for (tenant, anomaly) in self.drift(&mut d, &book, now)? {
            found.entry(tenant).or_default().push(anomaly);
        }
        for (tenant, anomaly) in self.budgets(&mut d, tenants, &book, now)? {
            found.entry(tenant).or_default().push(anomaly);
        }
        Ok(found.into_values().flatten().collect())
    }

    /// Absolute spikes of users, feature tags and whole tenants, in that order: each
    /// scope that spent today against its baseline; breaches written in one statement,
    /// their runs read in one.
    fn spikes(
        &self,
        d: &mut CostAnomalyDriver<'_>,
        book: &DayBook,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, CostAnomaly)>> {
        let today = now.date_naive();
        let (from, to) = (shift(today, -self.config.lookback_days)?, shift(today, -2)?);
        let mut breaches = Vec::new();
        for level in [Some(EntityColumn::User), Some(EntityColumn::Feature), None] {
            for key in book.scopes(level, None) {
                let spend = book.day(key, today);
                if spend.requests == 0 {
                    continue; // no calls today, nothing to compare
                }
                let Some(base) = book.active_day_avg(key, from, to) else {
                    continue; // a new scope has no baseline and never spikes
                };
                let ratio = spend.cost_cents / base;
                if ratio < self.config.spike_ratio {
                    continue;
                }
                let entity_type = match level {
                    Some(EntityColumn::User) => EntityType::User,
                    Some(EntityColumn::Feature) => EntityType::Feature,
                    None => EntityType::Tenant,
                };
                // A tenant's own spike names the tenant as its entity.
                let entity_id = key.2.clone().unwrap_or_else(|| key.1.to_string());
                breaches.push(Breach {
                    scope: key,
                    input: BreachInput {
                        entity: EntityKey {
                            entity_type,
                            entity_id: Some(entity_id),
                        },
                        breach_type: BreachType::AbsoluteSpike,
                        breach_date: today,
                        deviation_pct: (ratio - 1.0) * 100.0,
                        current_value_cents: spend.cost_cents,
                        baseline_value_cents: base,
                    },
                });
            }
        }
        if breaches.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(&TenantId, &BreachInput)> =
            breaches.iter().map(|b| (&b.scope.1, &b.input)).collect();
        d.insert_breach_histories(&rows)?;
        // Each breaching entity's run of days up to today, within the week before it.
        let mut breaching: Vec<&TenantId> = breaches.iter().map(|b| &b.scope.1).collect();
        breaching.sort_unstable();
        breaching.dedup();
        let week = shift(today, -7)?;
        let mut days: HashMap<(TenantId, EntityKey), Vec<NaiveDate>> = HashMap::new();
        for (tenant, entity, day) in
            d.fetch_breach_days(&breaching, BreachType::AbsoluteSpike, week, today)?
        {
            let key = (TenantId::stored(tenant), entity);
            days.entry(key).or_default().push(day);
        }
        let mut found = Vec::new();
        for breach in breaches {
            let key = (breach.scope.1.clone(), breach.input.entity.clone());
            let run = days.get(&key).map_or(0, |breach_days| {
                run_ending(today, breach_days.iter().rev().copied())
            });
            if run < self.config.spike_days {
                continue;
            }
            let tenant_id = &breach.scope.1;
            let BreachInput {
                entity,
                deviation_pct,
                current_value_cents: spend,
                baseline_value_cents: base,
                ..
            } = breach.input;
            let who = match entity.entity_type {
                EntityType::User => "User",
                EntityType::Feature => "Feature",
                _ => "Tenant",
            };
            let message = format!(
                "{who} {} spending {deviation_pct:.1}% above baseline for {run} consecutive \
                 day(s)",
                entity.entity_id.as_deref().unwrap_or(tenant_id.as_str())
            );
            let input = AnomalyInput {
                key: AnomalyKey {
                    anomaly_type: AnomalyType::AbsoluteSpike,
                    entity,
                },
                severity: severity_band(deviation_pct),
                current_value_cents: spend,
                expected_value_cents: base,
                deviation_pct,
                threshold_pct: self.config.spike_ratio * 100.0,
                message,
                breach_count: run,
                derived_cause: Some(self.cause(book, breach.scope, today)),
                metadata: Some(serde_json::json!({
                    "lookback_days": self.config.lookback_days,
                    "baseline_daily_avg": base,
                    "consecutive_breaches": run,
                })),
                detected_at: now,
            };
            found.push((tenant_id.to_string(), d.upsert_anomaly(tenant_id, &input)?));
        }
        Ok(found)
    }

    /// Sustained drift of each tenant's whole spend: a drift day counted where the
    /// rolling average is high enough, the drift ended (one statement for all) where not.
    fn drift(
        &self,
        d: &mut CostAnomalyDriver<'_>,
        book: &DayBook,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, CostAnomaly)>> {
        let today = now.date_naive();
        let (week, base_from, base_to) = (shift(today, -6)?, shift(today, -28)?, shift(today, -8)?);
        let mut ended = Vec::new();
        let mut found = Vec::new();
        for key in book.scopes(None, None) {
            let Some(baseline) = book.active_day_avg(key, base_from, base_to) else {
                continue;
            };
            let tenant = &key.1;
            let rolling = book.range(key, week, today).0.cost_cents / 7.0;
            let ratio = rolling / baseline;
            if ratio < self.config.drift_ratio {
                ended.push(tenant);
                continue;
            }
            let entity = EntityKey {
                entity_type: EntityType::Tenant,
                entity_id: Some(tenant.to_string()),
            };
            let drift_pct = (ratio - 1.0) * 100.0;
            let observation = DriftObservation {
                rolling_avg_cents: rolling,
                baseline_avg_cents: baseline,
                drift_pct,
                today,
            };
            let days = d.upsert_drift_tracking(tenant, &entity, &observation)?;
            if days < self.config.drift_days {
                continue;
            }
            let input = AnomalyInput {
                key: AnomalyKey {
                    anomaly_type: AnomalyType::SustainedDrift,
                    entity,
                },
                severity: severity_band(drift_pct),
                current_value_cents: rolling,
                expected_value_cents: baseline,
                deviation_pct: drift_pct,
                threshold_pct: self.config.drift_ratio * 100.0,
                message: format!(
                    "Sustained drift detected: {drift_pct:.1}% above baseline for {days} days"
                ),
                breach_count: days,
                derived_cause: Some(self.cause(book, key, today)),
                metadata: Some(serde_json::json!({
                    "rolling_7d_avg": rolling,
                    "baseline_avg": baseline,
                    "drift_days": days,
                })),
                detected_at: now,
            };
            found.push((tenant.to_string(), d.upsert_anomaly(tenant, &input)?));
        }
        d.reset_tenant_drift(&ended)?;
        Ok(found)
    }

    /// Each active budget's daily and monthly spend against its limits (the budgets read
    /// in one statement).
    fn budgets(
        &self,
        d: &mut CostAnomalyDriver<'_>,
        tenants: Tenants<'_>,
        book: &DayBook,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, CostAnomaly)>> {
        let today = now.date_naive();
        let first = today.with_day(1).expect("every month has a first day");
        let mut found = Vec::new();
        for budget in d.fetch_active_budgets_of(tenants)? {
            let tenant_id = TenantId::stored(budget.tenant_id.clone());
            let (level, entity_type) = match (budget.budget_type, &budget.entity_id) {
                (BudgetType::Feature, Some(_)) => {
                    (Some(EntityColumn::Feature), EntityType::Feature)
                }
                (BudgetType::User, Some(_)) => (Some(EntityColumn::User), EntityType::User),
                (BudgetType::Tenant, _) => (None, EntityType::Tenant),
                _ => continue, // a feature or user budget without its id checks nothing
            };
            let entity = level.and(budget.entity_id.clone());
            let key: ScopeKey = (level, tenant_id, entity);
            // One anomaly per type and budget a day: of the two periods, the fuller one.
            let mut worst: Vec<AnomalyInput> = Vec::new();
            for (daily, limit) in [
                (true, budget.daily_limit_cents),
                (false, budget.monthly_limit_cents),
            ] {
                let Some(limit) = limit.filter(|l| *l > 0) else {
                    continue;
                };
                let spend = if daily {
                    book.day(&key, today)
                } else {
                    book.range(&key, first, today).0
                }
                .cost_cents;
                let usage = spend / f64::from(limit) * 100.0;
                let warn = f64::from(budget.warn_threshold_pct);
                let (anomaly_type, severity, threshold, label) = if usage >= 100.0 {
                    (
                        AnomalyType::BudgetExceeded,
                        Severity::High,
                        100.0,
                        "EXCEEDED",
                    )
                } else if usage >= warn {
                    let severity = if usage < 90.0 {
                        Severity::Medium
                    } else {
                        Severity::High
                    };
                    (AnomalyType::BudgetWarning, severity, warn, "WARNING")
                } else {
                    continue;
                };
                let name = match &budget.entity_id {
                    Some(id) => format!("{} '{id}'", budget.budget_type),
                    None => budget.budget_type.to_string(),
                };
                let (period, title) = if daily {
                    ("daily", "Daily")
                } else {
                    ("monthly", "Monthly")
                };
                let input = AnomalyInput {
                    key: AnomalyKey {
                        anomaly_type,
                        entity: EntityKey {
                            entity_type,
                            entity_id: budget.entity_id.clone(),
                        },
                    },
                    severity,
                    current_value_cents: spend,
                    expected_value_cents: f64::from(limit),
                    deviation_pct: usage,
                    threshold_pct: threshold,
                    message: format!(
                        "{title} budget {label} for {name}: {}% of the limit",
                        percent_text(usage, (usage < 100.0).then_some(100.0))
                    ),
                    breach_count: 1,
                    derived_cause: Some(DerivedCause::Unknown),
                    metadata: Some(serde_json::json!({
                        "period": period,
                        "limit_cents": limit,
                        "warn_threshold_pct": budget.warn_threshold_pct,
                        "budget_id": budget.id,
                    })),
                    detected_at: now,
                };
                match worst.iter_mut().find(|w| w.key == input.key) {
                    Some(w) if w.deviation_pct >= usage => {}
                    Some(w) => *w = input,
                    None => worst.push(input),
                }
            }
            for input in worst {
                found.push((budget.tenant_id.clone(), d.upsert_anomaly(&key.1, &input)?));
            }
        }
        Ok(found)
    }

    /// The first cause that the scope's calls today against yesterday's show: a retry
    /// loop, prompt growth, a feature surge (tenant only), traffic growth, else unknown. A
    /// retry share that appears from none yesterday counts as a retry loop.
    fn cause(&self, book: &DayBook, key: &ScopeKey, today: NaiveDate) -> DerivedCause {
        let c = &self.config;
        let now = book.day(key, today);
        let before = today
            .pred_opt()
            .map(|y| book.day(key, y))
            .unwrap_or_default();
        let retry_loop = match (
            per_call(&now, now.retries),
            per_call(&before, before.retries),
        ) {
            (Some(t), Some(y)) if y > 0.0 => t / y > c.retry_growth,
            (Some(t), _) => t > 0.0,
            _ => false,
        };
        if retry_loop {
            return DerivedCause::RetryLoop;
        }
        let prompt = growth(
            per_call(&now, now.input_tokens),
            per_call(&before, before.input_tokens),
        );
        if prompt.is_some_and(|g| g > c.prompt_growth) {
            return DerivedCause::PromptGrowth;
        }
        let (level, tenant_id, _) = key;
        if level.is_none() && now.cost_cents > 0.0 {
            let top = book
                .scopes(Some(EntityColumn::Feature), Some(tenant_id))
                .map(|k| book.day(k, today).cost_cents)
                .fold(0.0, f64::max);
            if top / now.cost_cents > c.feature_share {
                return DerivedCause::FeatureSurge;
            }
        }
        let requests = growth(Some(now.requests as f64), Some(before.requests as f64));
        if requests.is_some_and(|g| g > c.request_growth) {
            return DerivedCause::TrafficGrowth;
        }
        DerivedCause::Unknown
    }
}
