//! Tables other services own, read here: agent runs, execution traces, leader terms.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use crate::schema::{aos_traces, runs};

/// An agent run, as far as analytics reads it (`runs`).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = runs, check_for_backend(diesel::pg::Pg))]
pub struct Run {
    /// Run id.
    pub id: String,
    /// Tenant (runs without one are never reported).
    pub tenant_id: Option<String>,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
    /// Prompt tokens.
    pub input_tokens: Option<i32>,
    /// Completion tokens.
    pub output_tokens: Option<i32>,
}

/// A run to insert: for fixtures and tests, since another service owns the table.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = runs)]
pub struct NewRun {
    /// Run id.
    pub id: String,
    /// Tenant.
    pub tenant_id: Option<String>,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
    /// Prompt tokens.
    pub input_tokens: Option<i32>,
    /// Completion tokens.
    pub output_tokens: Option<i32>,
}

/// An execution trace, as far as analytics reads it (`aos_traces`).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = aos_traces, check_for_backend(diesel::pg::Pg))]
pub struct AosTrace {
    /// Database UUID.
    pub id: Uuid,
    /// Business key.
    pub trace_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
}

/// A trace to insert: for fixtures and tests.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = aos_traces)]
pub struct NewAosTrace {
    /// Business key.
    pub trace_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
}
