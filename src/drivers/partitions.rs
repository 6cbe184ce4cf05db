//! `PartitionDriver`: the daily partitions of `cost_records` — creating them ahead,
//! moving stray days out of the default partition, and retiring old days (detach, then
//! drop: never `DELETE`) once their rollups check out.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Date, Nullable, Text, Timestamptz};
use serde::Serialize;

use crate::db::require_transaction;
use crate::drivers::rollup::{RollupDriver, RollupRange};
use crate::error::{Error, Result};
use crate::sql_fns::{
    costdb_create_cost_partition, costdb_detach_cost_partition, costdb_detached_cost_partitions,
    costdb_drop_detached_cost_partition,
};
use crate::validate;

/// Every partition of `cost_records` with its bounds, oldest first, the default last.
const PARTITIONS: &str = "SELECT name, from_at, to_at, is_default FROM costdb_cost_partitions()";
/// The UTC days that have rows in the default partition.
const DEFAULT_DAYS: &str = "SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date AS day \
                            FROM cost_records_default ORDER BY 1";

/// One partition of `cost_records`.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, Serialize)]
pub struct CostPartition {
    /// Its table: `cost_records_pYYYYMMDD` for a day, `cost_records_legacy` for the rows
    /// stored before partitioning, `cost_records_default` for instants no other covers.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// First instant it holds; `None` when unbounded (legacy, default).
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub from_at: Option<DateTime<Utc>>,
    /// Instant after the last it holds; `None` for the default partition.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub to_at: Option<DateTime<Utc>>,
    /// Whether it is the default partition.
    #[diesel(sql_type = Bool)]
    pub is_default: bool,
}

#[derive(QueryableByName)]
struct DayRow {
    #[diesel(sql_type = Date)]
    day: NaiveDate,
}

/// What retiring the records before a day would drop, and whether it may.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionPlan {
    /// The partitions wholly before the cutoff, oldest first.
    pub partitions: Vec<CostPartition>,
    /// The UTC days among them whose rollups differ from their records: while any is
    /// listed, [`PartitionDriver::retire`] refuses.
    pub incomplete_days: Vec<NaiveDate>,
}

/// One detached partition dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetiredPartition {
    /// The table dropped, e.g. `cost_records_p20260301`.
    pub table: String,
    /// Request keys of its records deleted with it.
    pub keys_deleted: i64,
}

/// Keeps the daily partitions of `cost_records`.
pub struct PartitionDriver<'c> {
    conn: &'c mut PgConnection,
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

impl<'c> PartitionDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        PartitionDriver { conn }
    }

    /// Every partition of `cost_records`, oldest first, the default one last.
    pub fn fetch_partitions(&mut self) -> Result<Vec<CostPartition>> {
        Ok(diesel::sql_query(PARTITIONS).load(self.conn)?)
    }

    /// Creates the partitions of the UTC days `from..=to` that no partition covers yet,
    /// and of every day with rows in the default partition (moving them there). Returns
    /// the partitions created. Attaching takes a `SHARE UPDATE EXCLUSIVE` lock on
    /// `cost_records`: inserts go on meanwhile.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a reversed range or one longer than 366 days;
    /// [`Error::NoTransaction`] outside a transaction.
    pub fn create_partitions(&mut self, from: NaiveDate, to: NaiveDate) -> Result<Vec<String>> {
        validate::instant("from", midnight(from))?;
        validate::instant("to", midnight(to))?;
        if to < from {
            return Err(Error::invalid(
                "to",
                format!("the last day ({to}) is before the first ({from})"),
            ));
        }
        if (to - from).num_days() > 366 {
            return Err(Error::invalid("to", "at most 366 days at once"));
        }
        require_transaction(self.conn)?;
        let stray: Vec<DayRow> = diesel::sql_query(DEFAULT_DAYS).load(self.conn)?;
        let mut days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
        days.extend(stray.into_iter().map(|r| r.day));
        days.sort_unstable();
        days.dedup();
        let mut created = Vec::new();
        for day in days {
            let made: Option<String> =
                diesel::select(costdb_create_cost_partition(day)).get_result(self.conn)?;
            created.extend(made);
        }
        Ok(created)
    }

    /// The partitions whose every record is before UTC day `before`, and the days among
    /// them whose rollups differ from their records (checked in the caller's snapshot,
    /// without blocking writers).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a day PostgreSQL cannot store.
    pub fn plan_retention(&mut self, before: NaiveDate) -> Result<RetentionPlan> {
        let cutoff = midnight(before);
        validate::instant("before", cutoff)?;
        let partitions: Vec<CostPartition> = self
            .fetch_partitions()?
            .into_iter()
            .filter(|p| !p.is_default && p.to_at.is_some_and(|to| to <= cutoff))
            .collect();
        let mut incomplete_days = Vec::new();
        for p in &partitions {
            let to = p.to_at.expect("bounded").date_naive();
            let range = RollupRange {
                tenant_id: None,
                from: p.from_at.map(|at| at.date_naive()),
                to: to.checked_sub_days(Days::new(1)),
            };
            let differences = RollupDriver::new(self.conn).fetch_differences(&range)?;
            incomplete_days.extend(differences.iter().map(|d| d.bucket.date_naive()));
        }
        incomplete_days.sort_unstable();
        incomplete_days.dedup();
        Ok(RetentionPlan {
            partitions,
            incomplete_days,
        })
    }

    /// Detaches the partitions of `plan` from `cost_records` and moves the retention
    /// boundary past them: their records are gone from every read, their rollups stay,
    /// so reads over those days keep answering. Takes `cost_records`' `ACCESS EXCLUSIVE`
    /// lock until the caller's transaction ends, so commit at once: inserts wait
    /// meanwhile. Then [`drop_detached`](Self::drop_detached), in a transaction of its
    /// own, finishes the work without that lock. Never `DELETE`s a record.
    ///
    /// # Errors
    /// [`Error::RetentionRefused`] naming the days when the plan found rollups that
    /// differ from their records; [`Error::NoTransaction`] outside a transaction.
    pub fn retire(&mut self, plan: &RetentionPlan) -> Result<Vec<CostPartition>> {
        if !plan.incomplete_days.is_empty() {
            return Err(Error::RetentionRefused {
                days: plan.incomplete_days.clone(),
            });
        }
        require_transaction(self.conn)?;
        for partition in &plan.partitions {
            diesel::select(costdb_detach_cost_partition(&partition.name))
                .get_result::<DateTime<Utc>>(self.conn)?;
        }
        Ok(plan.partitions.clone())
    }

    /// Drops every partition [`retire`](Self::retire) detached (also those a run that
    /// stopped half-way left), after deleting the request keys of their records: from
    /// then on a retry of one of those request ids is billed again, the one window of
    /// idempotency. Takes no lock on `cost_records`.
    ///
    /// # Errors
    /// [`Error::NoTransaction`] outside a transaction.
    pub fn drop_detached(&mut self) -> Result<Vec<RetiredPartition>> {
        require_transaction(self.conn)?;
        let names: Vec<String> =
            diesel::select(costdb_detached_cost_partitions()).load(self.conn)?;
        let mut dropped = Vec::with_capacity(names.len());
        for table in names {
            let keys_deleted = diesel::select(costdb_drop_detached_cost_partition(&table))
                .get_result(self.conn)?;
            dropped.push(RetiredPartition {
                table,
                keys_deleted,
            });
        }
        Ok(dropped)
    }
}
