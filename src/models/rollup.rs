//! The rollups of `cost_records`: `cost_rollup_hourly` (tenant × UTC hour × model ×
//! feature tag) and `cost_rollup_daily` (tenant × UTC day × feature tag × user). Every
//! inserted record reaches them in the inserting transaction. A statement of fewer than
//! `costdb.fold_from` records (5,000) appends them as deltas: a row a record in
//! `cost_rollup_deltas`, or a row a tenant in `cost_rollup_delta_batches` when it holds
//! three or more records a tenant; `costdb_fold_rollup_deltas()` folds both in later
//! (migrations `2026-12-03-000024_rollup_deltas`, `2026-12-04-000025_delta_batches`). A
//! larger statement is folded into both by a trigger (migration
//! `2026-12-02-000015_cost_rollups`).
//! Reads go through the views of each rollup with its deltas. This module holds those
//! views, their sums and the pieces every read of them shares.

use std::ops::AddAssign;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use diesel::dsl::{count_star, sum};
use diesel::prelude::*;
use serde::Serialize;

use crate::schema::cost_records as cr;
use crate::sql_fns::{bool_int4, numeric_int8};

diesel::table! {
    /// `cost_rollup_hourly` and the deltas not yet folded into it (slot -1): the view every
    /// read of the hourly sums goes through (migration `2026-12-04-000025_delta_batches`).
    cost_rollup_hourly_live (tenant_id, bucket_hour, model, feature_tag, slot) {
        tenant_id -> Varchar,
        bucket_hour -> Timestamptz,
        model -> Varchar,
        feature_tag -> Varchar,
        slot -> Int2,
        requests -> Int8,
        retries -> Int8,
        input_tokens -> Int8,
        output_tokens -> Int8,
        cost_cents -> Float8,
    }
}

diesel::table! {
    /// `cost_rollup_daily` and the deltas not yet folded into it (slot -1): the view every
    /// read of the daily sums goes through.
    cost_rollup_daily_live (tenant_id, day, feature_tag, user_id, slot) {
        tenant_id -> Varchar,
        day -> Date,
        feature_tag -> Varchar,
        user_id -> Varchar,
        slot -> Int2,
        requests -> Int8,
        retries -> Int8,
        input_tokens -> Int8,
        output_tokens -> Int8,
        cost_cents -> Float8,
    }
}

use cost_rollup_daily_live as d;
use cost_rollup_hourly_live as h;

/// Sums over a set of cost records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Records.
    pub requests: i64,
    /// Records that were retries (`is_retry`).
    pub retries: i64,
    /// Sum of `input_tokens`.
    pub input_tokens: i64,
    /// Sum of `output_tokens`.
    pub output_tokens: i64,
    /// Sum of `cost_cents`.
    pub cost_cents: f64,
}

impl AddAssign for Totals {
    fn add_assign(&mut self, other: Totals) {
        self.requests += other.requests;
        self.retries += other.retries;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_cents += other.cost_cents;
    }
}

/// What the `*_totals` selections load: a sum of no rows is NULL.
pub(crate) type TotalsRow = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<f64>,
);

impl From<TotalsRow> for Totals {
    fn from((requests, retries, input, output, cents): TotalsRow) -> Self {
        Totals {
            requests: requests.unwrap_or(0),
            retries: retries.unwrap_or(0),
            input_tokens: input.unwrap_or(0),
            output_tokens: output.unwrap_or(0),
            cost_cents: cents.unwrap_or(0.0) + 0.0,
        }
    }
}

/// `sum(column)` (its helper type is ambiguous across backends in `diesel::dsl`).
type Sum<C> = diesel::helper_types::sum<C>;
/// The sum of a bigint column, as a bigint.
type SumInt8<C> = numeric_int8<Sum<C>>;

/// The totals of `cost_rollup_hourly` rows (summed over their slots).
#[diesel::dsl::auto_type]
pub(crate) fn hourly_totals() -> _ {
    let requests: SumInt8<h::requests> = numeric_int8(sum(h::requests));
    let retries: SumInt8<h::retries> = numeric_int8(sum(h::retries));
    let input: SumInt8<h::input_tokens> = numeric_int8(sum(h::input_tokens));
    let output: SumInt8<h::output_tokens> = numeric_int8(sum(h::output_tokens));
    let cents: Sum<h::cost_cents> = sum(h::cost_cents);
    (requests, retries, input, output, cents)
}

/// The totals of `cost_rollup_daily` rows (summed over their slots).
#[diesel::dsl::auto_type]
pub(crate) fn daily_totals() -> _ {
    let requests: SumInt8<d::requests> = numeric_int8(sum(d::requests));
    let retries: SumInt8<d::retries> = numeric_int8(sum(d::retries));
    let input: SumInt8<d::input_tokens> = numeric_int8(sum(d::input_tokens));
    let output: SumInt8<d::output_tokens> = numeric_int8(sum(d::output_tokens));
    let cents: Sum<d::cost_cents> = sum(d::cost_cents);
    (requests, retries, input, output, cents)
}

/// The totals of raw `cost_records` rows, shaped as the rollups' totals.
#[diesel::dsl::auto_type]
pub(crate) fn record_totals() -> _ {
    let retries: Sum<bool_int4<cr::is_retry>> = sum(bool_int4(cr::is_retry));
    let input: Sum<cr::input_tokens> = sum(cr::input_tokens);
    let output: Sum<cr::output_tokens> = sum(cr::output_tokens);
    let cents: Sum<cr::cost_cents> = sum(cr::cost_cents);
    (count_star().nullable(), retries, input, output, cents)
}

/// The tenant's hourly rollup rows of the hours in `[from, to)`.
#[diesel::dsl::auto_type]
pub(crate) fn hourly_window<'a>(tenant_id: &'a str, from: DateTime<Utc>, to: DateTime<Utc>) -> _ {
    h::table
        .filter(h::tenant_id.eq(tenant_id))
        .filter(h::bucket_hour.ge(from))
        .filter(h::bucket_hour.lt(to))
}

/// The tenant's daily rollup rows of the UTC days `from..=to`.
#[diesel::dsl::auto_type]
pub(crate) fn daily_window<'a>(tenant_id: &'a str, from: NaiveDate, to: NaiveDate) -> _ {
    d::table
        .filter(d::tenant_id.eq(tenant_id))
        .filter(d::day.between(from, to))
}

/// The tenant's records in `[from, to)`.
#[diesel::dsl::auto_type]
pub(crate) fn record_window<'a>(tenant_id: &'a str, from: DateTime<Utc>, to: DateTime<Utc>) -> _ {
    cr::table
        .filter(cr::tenant_id.eq(tenant_id))
        .filter(cr::created_at.ge(from))
        .filter(cr::created_at.lt(to))
}

/// The feature tag or user of a rollup row: records without one are `''` there.
pub(crate) fn blank_to_none(rolled: String) -> Option<String> {
    (!rolled.is_empty()).then_some(rolled)
}

const HOUR_US: i64 = 3_600_000_000;

/// The UTC hour that holds `at`.
pub(crate) fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at - Duration::microseconds(at.timestamp_micros().rem_euclid(HOUR_US))
}

/// A window cut at whole UTC hours: the whole hours the rollup serves, and the partial
/// hours at its edges that only the records can (each within one UTC hour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HourSplit {
    /// `[first whole hour, end of the last)`, when the window holds one.
    pub whole: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The partial hours, oldest first.
    pub edges: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Cuts `[from, to)` at whole UTC hours.
pub(crate) fn split_hours(from: DateTime<Utc>, to: DateTime<Utc>) -> HourSplit {
    let floor_from = hour_of(from);
    let first = if floor_from == from {
        from
    } else {
        floor_from + Duration::hours(1)
    };
    let last = hour_of(to);
    if first > last {
        // Both ends inside one hour.
        return HourSplit {
            whole: None,
            edges: vec![(from, to)],
        };
    }
    HourSplit {
        whole: (first < last).then_some((first, last)),
        edges: [(from, first), (last, to)]
            .into_iter()
            .filter(|(a, b)| a < b)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0).unwrap()
    }

    #[test]
    fn windows_are_cut_at_whole_hours() {
        let whole = |a, b| Some((at(a, 0), at(b, 0)));
        assert_eq!(
            split_hours(at(10, 0), at(13, 0)),
            HourSplit {
                whole: whole(10, 13),
                edges: vec![]
            }
        );
        assert_eq!(
            split_hours(at(10, 30), at(13, 15)),
            HourSplit {
                whole: whole(11, 13),
                edges: vec![(at(10, 30), at(11, 0)), (at(13, 0), at(13, 15))]
            }
        );
        assert_eq!(
            split_hours(at(10, 30), at(11, 15)),
            HourSplit {
                whole: None,
                edges: vec![(at(10, 30), at(11, 0)), (at(11, 0), at(11, 15))]
            }
        );
        assert_eq!(
            split_hours(at(10, 10), at(10, 50)),
            HourSplit {
                whole: None,
                edges: vec![(at(10, 10), at(10, 50))]
            }
        );
        assert_eq!(
            split_hours(at(10, 0), at(10, 50)),
            HourSplit {
                whole: None,
                edges: vec![(at(10, 0), at(10, 50))]
            }
        );
        let before_1970 = Utc.with_ymd_and_hms(1969, 12, 31, 23, 30, 0).unwrap();
        assert_eq!(
            hour_of(before_1970),
            Utc.with_ymd_and_hms(1969, 12, 31, 23, 0, 0).unwrap()
        );
    }
}
