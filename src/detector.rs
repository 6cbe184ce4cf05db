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

use chrono::{DateTime, Duration, NaiveDate, Utc};
use diesel::PgConnection;
use serde::Serialize;

use crate::drivers::{
    AnomalyInput, AnomalyKey, BreachInput, CostAnomalyDriver, DriftObservation, EntityColumn,
};
use crate::error::{Error, Result};
use crate::models::{
    AnomalyType, BreachType, BudgetType, CostAnomaly, DerivedCause, EntityType, Severity,
};
use crate::types::{BudgetScope, EntityKey};

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
        tenant_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<CostAnomaly>> {
        crate::db::require_transaction(conn)?;
        let today = now.date_naive();
        let mut d = CostAnomalyDriver::new(conn);
        let mut found = Vec::new();
        for column in [EntityColumn::User, EntityColumn::Feature] {
            found.extend(self.entity_spikes(&mut d, tenant_id, column, today, now)?);
        }
        found.extend(self.tenant_spike(&mut d, tenant_id, today, now)?);
        found.extend(self.drift(&mut d, tenant_id, today, now)?);
        found.extend(self.budgets(&mut d, tenant_id, today, now)?);
        Ok(found)
    }

    fn entity_spikes(
        &self,
        d: &mut CostAnomalyDriver<'_>,
        tenant_id: &str,
        column: EntityColumn,
        today: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Vec<CostAnomaly>> {
        let from = shift(today, -self.config.lookback_days)?;
        let baselines = d.fetch_entity_baseline(tenant_id, column, from, shift(today, -2)?)?;
        let (entity_type, scope): (EntityType, fn(String) -> BudgetScope) = match column {
            EntityColumn::User => (EntityType::User, BudgetScope::User),
            EntityColumn::Feature => (EntityType::Feature, BudgetScope::Feature),
        };
        let mut found = Vec::new();
        for spend in d.fetch_entity_today_spend(tenant_id, column, today)? {
            let Some(base) = baselines.iter().find(|b| b.entity == spend.entity) else {
                continue; // a new entity has no baseline and never spikes
            };
            let key = EntityKey {
                entity_type,
                entity_id: Some(spend.entity.clone()),
            };
            let anomaly = self.spike(
                d,
                tenant_id,
                key,
                scope(spend.entity.clone()),
                spend.cents,
                base.cents,
                today,
                now,
            )?;
            found.extend(anomaly);
        }
        Ok(found)
    }

    fn tenant_spike(
        &self,
        d: &mut CostAnomalyDriver<'_>,
        tenant_id: &str,
        today: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Option<CostAnomaly>> {
        let from = shift(today, -self.config.lookback_days)?;
        let Some(base) = d.fetch_tenant_baseline(tenant_id, from, shift(today, -2)?)? else {
            return Ok(None);
        };
        let spend = d.fetch_tenant_today_spend(tenant_id, today)?;
        let key = EntityKey {
            entity_type: EntityType::Tenant,
            entity_id: Some(tenant_id.into()),
        };
        self.spike(
            d,
            tenant_id,
            key,
            BudgetScope::Tenant,
            spend,
            base,
            today,
            now,
        )
    }

    /// Records a breach when `spend / base` crosses the spike ratio, and returns the
    /// anomaly once the breach run is long enough.
    #[allow(clippy::too_many_arguments)]
    fn spike(
        &self,
        d: &mut CostAnomalyDriver<'_>,
        tenant_id: &str,
        key: EntityKey,
        scope: BudgetScope,
        spend: f64,
        base: f64,
        today: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Option<CostAnomaly>> {
        if base <= 0.0 {
            return Ok(None);
        }
        let ratio = spend / base;
        if ratio < self.config.spike_ratio {
            return Ok(None);
        }
        let deviation_pct = (ratio - 1.0) * 100.0;
        d.insert_breach_history(
            tenant_id,
            &BreachInput {
                entity: key.clone(),
                breach_type: BreachType::AbsoluteSpike,
                breach_date: today,
                deviation_pct,
                current_value_cents: spend,
                baseline_value_cents: base,
            },
        )?;
        let run =
            d.fetch_consecutive_breaches(tenant_id, &key, BreachType::AbsoluteSpike, today)?;
        if run < self.config.spike_days {
            return Ok(None);
        }
        let who = match key.entity_type {
            EntityType::User => "User",
            EntityType::Feature => "Feature",
            _ => "Tenant",
        };
        let message = format!(
            "{who} {} spending {deviation_pct:.1}% above baseline for {run} consecutive day(s)",
            key.entity_id.as_deref().unwrap_or(tenant_id)
        );
        let cause = self.cause(d, tenant_id, &scope, today)?;
        let input = AnomalyInput {
            key: AnomalyKey {
                anomaly_type: AnomalyType::AbsoluteSpike,
                entity: key,
            },
            severity: severity_band(deviation_pct),
            current_value_cents: spend,
            expected_value_cents: base,
            deviation_pct,
            threshold_pct: self.config.spike_ratio * 100.0,
            message,
            breach_count: run,
            derived_cause: Some(cause),
            metadata: Some(serde_json::json!({
                "lookback_days": self.config.lookback_days,
                "baseline_daily_avg": base,
                "consecutive_breaches": run,
            })),
            detected_at: now,
        };
        d.upsert_anomaly(tenant_id, &input).map(Some)
    }

    fn drift(
        &self,
        d: &mut CostAnomalyDriver<'_>,
        tenant_id: &str,
        today: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Option<CostAnomaly>> {
        let rolling = d.fetch_rolling_avg(tenant_id, shift(today, -6)?, today)?;
        let baseline = d.fetch_baseline_avg(tenant_id, shift(today, -28)?, shift(today, -8)?)?;
        if baseline <= 0.0 {
            return Ok(None);
        }
        let key = EntityKey {
            entity_type: EntityType::Tenant,
            entity_id: Some(tenant_id.into()),
        };
        let ratio = rolling / baseline;
        if ratio < self.config.drift_ratio {
            d.reset_drift_tracking(tenant_id, &key)?;
            return Ok(None);
        }
        let drift_pct = (ratio - 1.0) * 100.0;
        let observation = DriftObservation {
            rolling_avg_cents: rolling,
            baseline_avg_cents: baseline,
            drift_pct,
            today,
        };
        let days = d.upsert_drift_tracking(tenant_id, &key, &observation)?;
        if days < self.config.drift_days {
            return Ok(None);
        }
        let cause = self.cause(d, tenant_id, &BudgetScope::Tenant, today)?;
        let input = AnomalyInput {
            key: AnomalyKey {
                anomaly_type: AnomalyType::SustainedDrift,
                entity: key,
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
            derived_cause: Some(cause),
            metadata: Some(serde_json::json!({
                "rolling_7d_avg": rolling,
                "baseline_avg": baseline,
                "drift_days": days,
            })),
            detected_at: now,
        };
        d.upsert_anomaly(tenant_id, &input).map(Some)
    }

    fn budgets(
        &self,
        d: &mut CostAnomalyDriver<'_>,
        tenant_id: &str,
        today: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Vec<CostAnomaly>> {
        let mut found = Vec::new();
        for budget in d.fetch_active_budgets(tenant_id)? {
            let (scope, entity_type) = match (budget.budget_type, budget.entity_id.clone()) {
                (BudgetType::Feature, Some(tag)) => {
                    (BudgetScope::Feature(tag), EntityType::Feature)
                }
                (BudgetType::User, Some(user)) => (BudgetScope::User(user), EntityType::User),
                (BudgetType::Tenant, _) => (BudgetScope::Tenant, EntityType::Tenant),
                _ => continue, // a feature or user budget without its id checks nothing
            };
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
                    d.fetch_daily_spend(tenant_id, today, &scope)?
                } else {
                    d.fetch_monthly_spend(tenant_id, today, &scope)?
                };
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
                found.push(d.upsert_anomaly(tenant_id, &input)?);
            }
        }
        Ok(found)
    }

    /// The first cause that today's records against yesterday's show: a retry loop,
    /// prompt growth, a feature surge (tenant only), traffic growth, else unknown. A retry
    /// share that appears from none yesterday counts as a retry loop.
    fn cause(
        &self,
        d: &mut CostAnomalyDriver<'_>,
        tenant_id: &str,
        scope: &BudgetScope,
        today: NaiveDate,
    ) -> Result<DerivedCause> {
        let c = &self.config;
        let activity = d.fetch_activity_comparison(tenant_id, today, scope)?;
        let retry = activity.retry_share();
        let retry_loop = match (retry.today, retry.yesterday) {
            (Some(t), Some(y)) if y > 0.0 => t / y > c.retry_growth,
            (Some(t), _) => t > 0.0,
            _ => false,
        };
        if retry_loop {
            return Ok(DerivedCause::RetryLoop);
        }
        let prompt = activity.prompt_size();
        if growth(prompt.today, prompt.yesterday).is_some_and(|g| g > c.prompt_growth) {
            return Ok(DerivedCause::PromptGrowth);
        }
        if *scope == BudgetScope::Tenant {
            let f = d.fetch_feature_concentration(tenant_id, today)?;
            if f.total_cents > 0.0 && f.top_feature_cents / f.total_cents > c.feature_share {
                return Ok(DerivedCause::FeatureSurge);
            }
        }
        let requests = activity.requests();
        if growth(requests.today, requests.yesterday).is_some_and(|g| g > c.request_growth) {
            return Ok(DerivedCause::TrafficGrowth);
        }
        Ok(DerivedCause::Unknown)
    }
}
