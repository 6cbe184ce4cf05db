//! Types every layer shares: validated ids, time windows, budget scopes, entity keys, tenant
//! sets, the advisory lock ids of the singleton jobs, and the column limits of the schema,
//! defined once.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::{BudgetType, EntityType};
use crate::validate;

/// Declares a validated text id: a newtype whose constructor refuses what its column
/// cannot hold, naming the field.
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, AsExpression)]
        #[serde(transparent)]
        #[diesel(sql_type = Text)]
        pub struct $name(String);

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <str as ToSql<Text, Pg>>::to_sql(&self.0, out)
            }
        }

        impl $name {
            #[doc = concat!(
                "Checks `value`: not blank, at most [`", stringify!($max), "`] characters, ",
                "no NUL.\n\n# Errors\n[`Error::InvalidInput`] naming `", $field, "`."
            )]
            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                validate::required($field, &value, $max)?;
                Ok($name(value))
            }

            /// A value read from its column, which fits by construction.
            #[allow(dead_code)]
            pub(crate) fn stored(value: String) -> Self {
                $name(value)
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                $name::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                $name::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl From<&$name> for String {
            fn from(id: &$name) -> String {
                id.0.clone()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                $name::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_id!(
    /// A tenant of the cost tables: the scope every cost-family method takes first. At most
    /// [`limits::TENANT_ID`] characters, so it fits every `tenant_id` column it is bound to.
    TenantId,
    "tenant_id",
    limits::TENANT_ID
);

text_id!(
    /// A worker run's id (`worker_runs.id`): at most [`limits::WORKER_RUN_ID`] characters.
    RunId,
    "run_id",
    limits::WORKER_RUN_ID
);

/// A half-open window `[from, to)` of instants; `from` must be before `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimeWindow {
    /// First instant included.
    pub from: DateTime<Utc>,
    /// First instant excluded.
    pub to: DateTime<Utc>,
}

impl TimeWindow {
    /// `[from, to)`; an empty or reversed window, or one PostgreSQL cannot store, is
    /// [`Error::InvalidInput`].
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Self> {
        validate::instant("window.from", from)?;
        validate::instant("window.to", to)?;
        if from >= to {
            return Err(Error::invalid(
                "window",
                format!("`from` ({from}) must be before `to` ({to})"),
            ));
        }
        Ok(TimeWindow { from, to })
    }
}

/// Who a budget applies to; the feature tag or user id travels with its scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BudgetScope {
    /// The whole tenant.
    Tenant,
    /// One feature tag.
    Feature(String),
    /// One end user.
    User(String),
}

impl BudgetScope {
    pub(crate) fn parts(&self) -> (BudgetType, Option<&str>) {
        match self {
            BudgetScope::Tenant => (BudgetType::Tenant, None),
            BudgetScope::Feature(tag) => (BudgetType::Feature, Some(tag)),
            BudgetScope::User(user) => (BudgetType::User, Some(user)),
        }
    }
}

/// Which tenants a set-based read covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Tenants<'a> {
    /// Every tenant.
    All,
    /// One tenant.
    One(&'a TenantId),
}

/// Whose breach or drift: an entity of a tenant (`entity_id: None` for the tenant as a
/// whole; `Some("")`, as the original system wrote it, means the same).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct EntityKey {
    /// What kind of entity.
    pub entity_type: EntityType,
    /// Which one (at most 128 characters).
    pub entity_id: Option<String>,
}

impl EntityKey {
    /// The entity id as stored: `None` for the tenant as a whole, also for `Some("")`.
    pub fn id(&self) -> Option<&str> {
        self.entity_id.as_deref().filter(|id| !id.is_empty())
    }
}

/// The advisory lock ids of the singleton jobs (`LeaderGuard` and `costdb leader`).
pub mod locks {
    /// The daily canary run.
    pub const LOCK_CANARY_RUNNER: i64 = 7001;
    /// The CostSim alert-queue worker.
    pub const LOCK_ALERT_WORKER: i64 = 7002;
    /// The provenance archiver.
    pub const LOCK_PROVENANCE_ARCHIVER: i64 = 7003;
    /// The baseline backfill.
    pub const LOCK_BASELINE_BACKFILL: i64 = 7004;
    /// `costdb upkeep` (not in the original): reclaiming reservations, retrying and purging
    /// alerts.
    pub const LOCK_UPKEEP: i64 = 7005;

    /// The singleton jobs' locks and their names.
    pub const KNOWN_LOCKS: [(i64, &str); 5] = [
        (LOCK_CANARY_RUNNER, "canary runner"),
        (LOCK_ALERT_WORKER, "alert worker"),
        (LOCK_PROVENANCE_ARCHIVER, "provenance archiver"),
        (LOCK_BASELINE_BACKFILL, "baseline backfill"),
        (LOCK_UPKEEP, "upkeep"),
    ];
}

/// The `varchar` sizes of the migrations, in characters, defined once: every check of a
/// text's length uses these, and a test compares them with the migrated schema.
pub mod limits {
    /// `tenant_id` of the cost tables (`cost_records`, `cost_budgets`, `cost_anomalies`, …).
    pub const TENANT_ID: usize = 64;
    /// `worker_runs.tenant_id` and `worker_runs.id`.
    pub const WORKER_RUN_ID: usize = 36;
    /// `tenant_id` of `pattern_feedback` and `prediction_events`.
    pub const PATTERN_TENANT_ID: usize = 255;
    /// `coordination_audit_records.tenant_id` and its envelope ids.
    pub const AUDIT_ID: usize = 100;
    /// User, request, workflow and skill ids and the model name of `cost_records`; the
    /// ids of `cost_anomalies` and `cost_budgets`.
    pub const COST_ID: usize = 64;
    /// Feature tags (`cost_records.feature_tag`, `feature_tags.tag`) and entity ids.
    pub const TAG: usize = 128;
    /// `feature_tags.display_name`.
    pub const DISPLAY_NAME: usize = 256;
    /// Ids of the breach history and the drift trackers (`bh_`/`dt_` + 16 hex).
    pub const DETECTOR_ROW_ID: usize = 32;
    /// `pattern_feedback.signature` and `prediction_events.subject_id`.
    pub const PATTERN_TEXT: usize = 255;
    /// `worker_runs.worker_id`.
    pub const WORKER_ID: usize = 100;
    /// One run id in `pattern_feedback.provenance` (a jsonb array; bounded here, not by
    /// the column).
    pub const PROVENANCE_RUN_ID: usize = 255;
    /// `pattern_feedback.threshold_used`.
    pub const THRESHOLD_USED: usize = 100;
    /// A holder's name in `leader_terms.holder` (text; bounded here, not by the column).
    pub const HOLDER: usize = 256;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_holds_only_what_its_column_takes() {
        let fits = "é".repeat(limits::TENANT_ID);
        assert_eq!(TenantId::new(fits.clone()).unwrap(), fits.as_str());
        for (bad, why) in [
            ("".to_owned(), "must not be empty"),
            ("  ".to_owned(), "must not be empty"),
            ("é".repeat(limits::TENANT_ID + 1), "the column holds 64"),
            ("a\0b".to_owned(), "NUL"),
        ] {
            match TenantId::new(bad) {
                Err(Error::InvalidInput { field, reason }) => {
                    assert_eq!(field, "tenant_id");
                    assert!(reason.contains(why), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(RunId::new("r".repeat(limits::WORKER_RUN_ID)).is_ok());
        assert!(RunId::new("r".repeat(limits::WORKER_RUN_ID + 1)).is_err());
    }

    #[test]
    fn an_id_reads_and_writes_as_its_text() {
        let acme: TenantId = "acme".parse().unwrap();
        assert_eq!(acme.to_string(), "acme");
        assert_eq!(serde_json::to_string(&acme).unwrap(), "\"acme\"");
        let back: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(back, acme);
        // Deserializing checks too.
        assert!(serde_json::from_str::<TenantId>("\"\"").is_err());
        assert_eq!(String::from(&acme), "acme");
    }
}
