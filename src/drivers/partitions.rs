//! `PartitionDriver`: the daily partitions of `cost_records` — creating them ahead,
//! moving stray days out of the default partition, detaching old days and dropping them
//! (never `DELETE`). Which days may go is [`retention`](crate::retention)'s to decide.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Nullable, Text, Timestamptz};
use serde::Serialize;

use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::prepared::Prepared;
use crate::sql_fns::{
    costdb_create_cost_partitions, costdb_detach_cost_partition, costdb_detached_cost_partitions,
    costdb_drop_detached_cost_partition,
};
use crate::validate;

/// Every partition of `cost_records` with its bounds (see the file).
const PARTITIONS: &str = include_str!("partitions/partitions.sql");

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
        Ok(Prepared {
            sql: PARTITIONS,
            params: &[],
        }
        .load(self.conn)?)
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
        Ok(diesel::select(costdb_create_cost_partitions(from, to)).load(self.conn)?)
    }

    /// The partitions whose every record is before UTC day `before`, oldest first (never
    /// the default partition).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a day PostgreSQL cannot store.
    pub fn fetch_retirable(&mut self, before: NaiveDate) -> Result<Vec<CostPartition>> {
        let cutoff = midnight(before);
        validate::instant("before", cutoff)?;
        Ok(self
            .fetch_partitions()?
            .into_iter()
            .filter(|p| !p.is_default && p.to_at.is_some_and(|to| to <= cutoff))
            .collect())
    }

    /// Detaches `partitions` from `cost_records` and moves the retention boundary past
    /// them: their records are gone from every read; their rollups stay. Takes
    /// `cost_records`' `ACCESS EXCLUSIVE` lock until the caller's transaction ends, so
    /// commit at once: inserts wait meanwhile. Checks nothing about their rollups:
    /// [`Retention`](crate::retention::Retention) does, first. Never `DELETE`s a record.
    ///
    /// # Errors
    /// [`Error::NoTransaction`] outside a transaction; a database error for a name that
    /// is not a bounded partition of `cost_records`.
    pub fn detach(&mut self, partitions: &[CostPartition]) -> Result<()> {
        require_transaction(self.conn)?;
        for partition in partitions {
            diesel::select(costdb_detach_cost_partition(&partition.name))
                .get_result::<DateTime<Utc>>(self.conn)?;
        }
        Ok(())
    }

    /// Drops every partition [`detach`](Self::detach) detached (also those a run that
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
