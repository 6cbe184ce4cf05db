//! One driver per data-access role. Each borrows the caller's connection, runs its SQL at
//! once, and never begins, commits or rolls back: the caller owns the transaction.

pub mod alert;
pub mod analytics_read;
pub mod anomaly;
pub mod audit;
pub mod cost_write;
pub mod patterns;
pub(crate) mod prepared;
pub mod provenance;
pub mod worker_write;

pub use alert::{
    anomaly_alert_payload, next_step, AlertDriver, ClaimedAlert, NewAlert, NextStep, Outcome,
    QueueStats,
};
pub use analytics_read::{
    bucket_width, AnalyticsQuery, AnalyticsReadDriver, CountBucket, FeatureSpend, ModelBucket,
    ModelSpend, SpendBucket, TimeWindow, UsageBucket,
};
pub use anomaly::{
    AnomalyInput, AnomalyKey, BreachInput, CostAnomalyDriver, DayComparison, DriftObservation,
    EntityColumn, EntityKey, EntitySpend, FeatureConcentration,
};
pub use audit::{AuditDriver, AuditOutcome};
pub use cost_write::{
    BudgetLimits, BudgetScope, CostInput, CostWriteDriver, FeatureTagChanges, FeatureTagInput,
    RecordedCost, BULK_CHUNK,
};
pub use patterns::{
    FeedbackInput, PatternDetectionDriver, PredictionDriver, PredictionFilter, PredictionInput,
    PredictionSummary, WorkerRunTotal,
};
pub use provenance::{
    BackfillStats, BaselineRecord, DriftStats, ProvenanceDriver, ProvenanceFilter, ProvenanceInput,
};
pub use worker_write::{BudgetSnapshot, CostAdvisory, RunCost, WorkerRunData, WorkerWriteService};
