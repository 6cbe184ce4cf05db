//! Closed sets of strings, stored as the original system's exact values.

use std::fmt;
use std::str::FromStr;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;

/// A stored string that is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} value {value:?}")]
pub struct UnknownValue {
    /// Which enum was being read.
    pub kind: &'static str,
    /// The string found.
    pub value: String,
}

macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident ($kind:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, AsExpression, FromSqlRow)]
        #[diesel(sql_type = Text)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The exact string stored in the database.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownValue { kind: $kind, value: other.to_owned() }),
                }
            }
        }

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
            }
        }

        impl FromSql<Text, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                let text = std::str::from_utf8(bytes.as_bytes())?;
                Ok(text.parse()?)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_enum! {
    /// Kind of a cost anomaly (`cost_anomalies.anomaly_type`).
    AnomalyType ("anomaly type") {
        /// Spend far above the entity's baseline on consecutive days.
        AbsoluteSpike = "ABSOLUTE_SPIKE",
        /// The 7-day average stayed above the baseline for days.
        SustainedDrift = "SUSTAINED_DRIFT",
        /// Spend crossed a budget's warning threshold.
        BudgetWarning = "BUDGET_WARNING",
        /// Spend crossed a budget's limit.
        BudgetExceeded = "BUDGET_EXCEEDED",
        /// Legacy value found in old rows.
        UserSpike = "USER_SPIKE",
        /// Legacy value found in old rows.
        FeatureSpike = "FEATURE_SPIKE",
    }
}

string_enum! {
    /// Severity of a cost anomaly.
    Severity ("severity") {
        /// Low.
        Low = "LOW",
        /// Medium.
        Medium = "MEDIUM",
        /// High.
        High = "HIGH",
        /// Critical (documented by the original, never produced by its engine).
        Critical = "CRITICAL",
    }
}

string_enum! {
    /// The cause the anomaly engine derived for a spike or drift.
    DerivedCause ("derived cause") {
        /// Retries grew.
        RetryLoop = "RETRY_LOOP",
        /// Average prompt size grew.
        PromptGrowth = "PROMPT_GROWTH",
        /// One feature took most of the spend.
        FeatureSurge = "FEATURE_SURGE",
        /// Request count grew.
        TrafficGrowth = "TRAFFIC_GROWTH",
        /// None of the above.
        Unknown = "UNKNOWN",
    }
}

string_enum! {
    /// What an anomaly, breach or drift row is about.
    EntityType ("entity type") {
        /// One end user.
        User = "user",
        /// One feature tag.
        Feature = "feature",
        /// The whole tenant.
        Tenant = "tenant",
        /// One model.
        Model = "model",
    }
}

string_enum! {
    /// Scope of a budget (`cost_budgets.budget_type`).
    BudgetType ("budget type") {
        /// The whole tenant (entity id is NULL).
        Tenant = "tenant",
        /// One feature tag.
        Feature = "feature",
        /// One end user.
        User = "user",
    }
}

string_enum! {
    /// Rule a breach-history row records.
    BreachType ("breach type") {
        /// Absolute spike rule.
        AbsoluteSpike = "ABSOLUTE_SPIKE",
        /// Sustained drift rule.
        SustainedDrift = "SUSTAINED_DRIFT",
    }
}

string_enum! {
    /// Life-cycle state of a worker run.
    WorkerStatus ("worker run status") {
        /// Accepted, not started.
        Queued = "queued",
        /// Executing.
        Running = "running",
        /// Finished successfully (terminal).
        Completed = "completed",
        /// Finished with an error (terminal).
        Failed = "failed",
        /// Died without reporting (terminal).
        Crashed = "crashed",
    }
}

impl WorkerStatus {
    /// Completed, failed and crashed runs are final: the database refuses changes to them.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            WorkerStatus::Completed | WorkerStatus::Failed | WorkerStatus::Crashed
        )
    }
}

string_enum! {
    /// Kind of an observed pattern.
    PatternType ("pattern type") {
        /// Repeated failures with one error signature.
        FailurePattern = "failure_pattern",
        /// A worker's cost jumped.
        CostSpike = "cost_spike",
    }
}

string_enum! {
    /// Severity of an observed pattern.
    PatternSeverity ("pattern severity") {
        /// Informational.
        Info = "info",
        /// Warning.
        Warning = "warning",
        /// Critical.
        Critical = "critical",
    }
}

string_enum! {
    /// Kind of an advisory prediction.
    PredictionType ("prediction type") {
        /// A worker is likely to fail.
        FailureLikelihood = "failure_likelihood",
        /// Cost is likely to overrun.
        CostOverrun = "cost_overrun",
    }
}

string_enum! {
    /// What a prediction is about.
    SubjectType ("subject type") {
        /// A worker.
        Worker = "worker",
        /// A run.
        Run = "run",
        /// A tenant.
        Tenant = "tenant",
    }
}

string_enum! {
    /// Which CostSim variant produced a provenance record.
    VariantSlug ("variant slug") {
        /// CostSim V1.
        V1 = "v1",
        /// CostSim V2.
        V2 = "v2",
        /// Canary run.
        Canary = "canary",
    }
}

string_enum! {
    /// Where a provenance record came from.
    ProvenanceSource ("provenance source") {
        /// The sandbox.
        Sandbox = "sandbox",
        /// The canary runner.
        Canary = "canary",
        /// Entered by hand.
        Manual = "manual",
        /// Historical backfill.
        Backfill = "backfill",
    }
}

string_enum! {
    /// Delivery state of a queued alert.
    AlertStatus ("alert status") {
        /// Waiting to be sent (or retried).
        Pending = "pending",
        /// Delivered.
        Sent = "sent",
        /// Gave up.
        Failed = "failed",
    }
}

string_enum! {
    /// The window a budget counter covers (`budget_counters.period`).
    BudgetPeriod ("budget period") {
        /// One UTC day, with the budget's daily limit.
        Daily = "daily",
        /// One UTC calendar month, with the budget's monthly limit.
        Monthly = "monthly",
    }
}

string_enum! {
    /// Where a budget reservation stands (`budget_reservations.status`).
    ReservationStatus ("reservation status") {
        /// Holding its estimate against the budgets' counters.
        Held = "held",
        /// The call's actual cost was recorded and its estimate given back.
        Settled = "settled",
        /// The call failed; its estimate was given back.
        Released = "released",
        /// Its holder never came back; `reclaim_expired` gave its estimate back.
        Expired = "expired",
    }
}

string_enum! {
    /// What a queued alert announces.
    AlertType ("alert type") {
        /// The circuit breaker disabled CostSim V2.
        Disable = "disable",
        /// The circuit breaker re-enabled it.
        Enable = "enable",
        /// A canary run failed.
        CanaryFail = "canary_fail",
        /// The anomaly detector found a cost anomaly (not in the original; see
        /// `AlertDriver::insert_anomaly_alerts`).
        CostAnomaly = "cost_anomaly",
    }
}

string_enum! {
    /// Severity of a circuit-breaker incident.
    IncidentSeverity ("incident severity") {
        /// Page now.
        P1 = "P1",
        /// Urgent.
        P2 = "P2",
        /// Routine.
        P3 = "P3",
    }
}

string_enum! {
    /// Class of an optimisation envelope.
    EnvelopeClass ("envelope class") {
        /// Safety.
        Safety = "SAFETY",
        /// Reliability.
        Reliability = "RELIABILITY",
        /// Cost.
        Cost = "COST",
        /// Performance.
        Performance = "PERFORMANCE",
    }
}

string_enum! {
    /// A coordination decision.
    AuditDecision ("audit decision") {
        /// The envelope was applied.
        Applied = "APPLIED",
        /// It was rejected for a conflict.
        Rejected = "REJECTED",
        /// Another envelope pre-empted it.
        Preempted = "PREEMPTED",
    }
}

string_enum! {
    /// Width of an analytics time bucket (UTC).
    TimeBucket ("time bucket") {
        /// One hour.
        Hour = "hour",
        /// One UTC day.
        Day = "day",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_unknown_values_are_named() {
        for s in WorkerStatus::ALL {
            assert_eq!(s.as_str().parse::<WorkerStatus>(), Ok(*s));
        }
        let err = "done".parse::<WorkerStatus>().unwrap_err();
        assert_eq!(err.to_string(), "unknown worker run status value \"done\"");
        assert_eq!(
            serde_json::to_string(&AnomalyType::BudgetWarning).unwrap(),
            "\"BUDGET_WARNING\""
        );
    }
}
