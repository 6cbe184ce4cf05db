//! One driver per data-access role. Each borrows the caller's connection, runs its SQL at
//! once, and never begins, commits or rolls back: the caller owns the transaction.

pub(crate) mod alert;
pub(crate) mod analytics_read;
pub(crate) mod anomaly;
pub(crate) mod audit;
pub(crate) mod cost_write;
pub(crate) mod partitions;
pub(crate) mod patterns;
pub(crate) mod provenance;
pub(crate) mod rollup;
pub(crate) mod worker_write;

pub use alert::{
    anomaly_alert_payload, next_step, AlertDriver, ClaimedAlert, NewAlert, NextStep, Outcome,
    QueueStats, DEFAULT_MAX_ATTEMPTS, MAX_BACKOFF, MAX_BATCH,
};
pub use analytics_read::{
    bucket_width, AnalyticsQuery, AnalyticsReadDriver, CountBucket, FeatureSpend, ModelBucket,
    ModelSpend, SpendBucket, UsageBucket,
};
pub use anomaly::{
    ActivityComparison, AnomalyInput, AnomalyKey, BreachInput, CostAnomalyDriver, DayActivity,
    DayComparison, DayRow, DriftObservation, EntityColumn, EntitySpend, FeatureConcentration,
};
pub use audit::{AuditDriver, AuditOutcome};
pub use cost_write::{
    BudgetLimits, CostWriteDriver, FeatureTagChanges, FeatureTagInput, RecordedCost, BULK_CHUNK,
};
pub use partitions::{CostPartition, PartitionDriver, RetiredPartition};
pub use patterns::{
    FeedbackInput, FeedbackQuery, PatternDetectionDriver, PredictionDriver, PredictionFilter,
    PredictionInput, PredictionSummary, PredictionsQuery, RunsQuery, WorkerRunTotal, MAX_LIMIT,
};
pub use provenance::{
    BackfillStats, BaselineRecord, DriftStats, ProvenanceDriver, ProvenanceFilter, ProvenanceInput,
    MAX_PAGE,
};
pub use rollup::{
    vacuum_deltas, RebuildSummary, Rollup, RollupDifference, RollupDriver, RollupRange,
};
pub use worker_write::{BudgetSnapshot, CostAdvisory, RunCost, WorkerRunData, WorkerWriteDriver};
