//! Fixed SQL text with typed parameters, kept prepared by Diesel's statement cache.
//!
//! `diesel::sql_query` sends its text unprepared every time, so PostgreSQL parses and
//! plans it on every call. A [`Prepared`] statement is prepared once per connection and
//! then only executed; the text is a constant, never built from input.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::pg::data_types::PgInterval;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{
    Array, BigInt, Bool, Date, Double, Int4, Interval, Jsonb, Nullable, Text, Timestamptz, Untyped,
};
use diesel::{PgConnection, QueryResult, RunQueryDsl};

/// One parameter value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Texts(&'a [String]),
    Strs(&'a [&'a str]),
    Int4s(&'a [i32]),
    Floats(&'a [f64]),
    Flags(&'a [bool]),
    OptInstants(&'a [Option<DateTime<Utc>>]),
    Days(&'a [NaiveDate]),
    OptTexts(&'a [Option<&'a str>]),
    OptFloats(&'a [Option<f64>]),
    OptInt4s(&'a [Option<i32>]),
    OptJsons(&'a [Option<&'a serde_json::Value>]),
    Instant(&'a DateTime<Utc>),
    OptInstant(Option<&'a DateTime<Utc>>),
    Int4(i32),
    Interval(PgInterval),
    Day(NaiveDate),
    Float(f64),
    OptJson(Option<&'a serde_json::Value>),
    Flag(bool),
    OptFlag(Option<bool>),
    OptInt4(Option<i32>),
    Int(i64),
}

/// `sql` with `$1`, `$2`… standing for `params[0]`, `params[1]`…; results are read by
/// column name, as from `sql_query`.
#[derive(Debug)]
pub(crate) struct Prepared<'a> {
    pub(crate) sql: &'static str,
    pub(crate) params: &'a [Param<'a>],
}

impl QueryId for Prepared<'_> {
    type QueryId = ();
    // Cached by its SQL text, which is a constant.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_> {
    type SqlType = Untyped;
}

impl RunQueryDsl<PgConnection> for Prepared<'_> {}

impl QueryFragment<Pg> for Prepared<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // Comment lines (`-- …`, the files' documentation) are not sent: a `$n` in them
        // must not become a parameter.
        for line in self
            .sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
        {
            self.push_line(&mut out, line)?;
            out.push_sql("\n");
        }
        Ok(())
    }
}

/// A statement (a [`Prepared`] one, or a query of Diesel's DSL) planned for each call's
/// values instead of kept prepared: for a statement whose best plan depends on how large
/// its tables have grown since the session began, where a plan kept from when they were
/// small would go on reading them whole. Planning runs before the statement takes any
/// row lock, so it does not lengthen a lock's hold.
#[derive(Debug)]
pub(crate) struct PlannedPerCall<Q>(pub(crate) Q);

impl<Q> QueryId for PlannedPerCall<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for PlannedPerCall<Q> {
    type SqlType = Q::SqlType;
}

impl<Q> RunQueryDsl<PgConnection> for PlannedPerCall<Q> {}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for PlannedPerCall<Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        self.0.walk_ast(out)
    }
}

impl Prepared<'_> {
    /// Pushes one line of the statement, each `$n` bound to `params[n - 1]`.
    fn push_line<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, line: &'b str) -> QueryResult<()> {
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_sql(&rest[..at]);
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len() - at - 1, |n| n);
            let n: usize = rest[at + 1..at + 1 + digits].parse().map_err(|_| {
                diesel::result::Error::QueryBuilderError("a `$` without a number".into())
            })?;
            let param = self.params.get(n.wrapping_sub(1)).ok_or_else(|| {
                diesel::result::Error::QueryBuilderError(format!("no parameter ${n}").into())
            })?;
            match param {
                Param::Text(v) => out.push_bind_param::<Text, _>(*v)?,
                Param::OptText(v) => out.push_bind_param::<Nullable<Text>, _>(v)?,
                Param::Texts(v) => out.push_bind_param::<Array<Text>, _>(*v)?,
                Param::Strs(v) => out.push_bind_param::<Array<Text>, _>(*v)?,
                Param::Int4s(v) => out.push_bind_param::<Array<Int4>, _>(*v)?,
                Param::Floats(v) => out.push_bind_param::<Array<Double>, _>(*v)?,
                Param::Flags(v) => out.push_bind_param::<Array<Bool>, _>(*v)?,
                Param::OptInstants(v) => {
                    out.push_bind_param::<Array<Nullable<Timestamptz>>, _>(*v)?
                }
                Param::Days(v) => out.push_bind_param::<Array<Date>, _>(*v)?,
                Param::OptTexts(v) => out.push_bind_param::<Array<Nullable<Text>>, _>(*v)?,
                Param::OptFloats(v) => out.push_bind_param::<Array<Nullable<Double>>, _>(*v)?,
                Param::OptInt4s(v) => out.push_bind_param::<Array<Nullable<Int4>>, _>(*v)?,
                Param::OptJsons(v) => out.push_bind_param::<Array<Nullable<Jsonb>>, _>(*v)?,
                Param::Instant(v) => out.push_bind_param::<Timestamptz, _>(*v)?,
                Param::OptInstant(v) => out.push_bind_param::<Nullable<Timestamptz>, _>(v)?,
                Param::Int4(v) => out.push_bind_param::<Int4, _>(v)?,
                Param::Interval(v) => out.push_bind_param::<Interval, _>(v)?,
                Param::Day(v) => out.push_bind_param::<Date, _>(v)?,
                Param::Float(v) => out.push_bind_param::<Double, _>(v)?,
                Param::OptJson(v) => out.push_bind_param::<Nullable<Jsonb>, _>(v)?,
                Param::Flag(v) => out.push_bind_param::<Bool, _>(v)?,
                Param::OptFlag(v) => out.push_bind_param::<Nullable<Bool>, _>(v)?,
                Param::OptInt4(v) => out.push_bind_param::<Nullable<Int4>, _>(v)?,
                Param::Int(v) => out.push_bind_param::<BigInt, _>(v)?,
            }
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}
