//! Reads from a streaming replica: analytics, reports and the detector's spend inputs
//! served off the primary, with a bound on how stale they may be.
//!
//! A [`ReadReplica`] holds a session on the replica (read-only, in UTC) and, when given a
//! primary's URL, one there to fall back to. [`ReadReplica::reads`] measures how far
//! the replica is behind ([`ReadReplica::lag`]) and hands out [`Reads`] on the replica
//! when it is within `max_lag`; beyond it, on the primary, or [`Error::ReplicaLag`] when no
//! primary was given. [`Reads`] offers read drivers only: no write driver can be made from
//! it, so a write can never reach a replica.
//!
//! ```compile_fail
//! # fn f(replica: &mut costdb::replica::ReadReplica) -> costdb::Result<()> {
//! let mut reads = replica.reads()?;
//! // The session is private to `Reads`: there is no connection to write through.
//! costdb::drivers::CostWriteDriver::new(reads.conn);
//! # Ok(()) }
//! ```

use std::time::Duration;

use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use serde::Serialize;

use crate::db;
use crate::drivers::AnalyticsReadDriver;
use crate::error::{Error, Result};
use crate::prepared::Prepared;

/// How far behind its primary the server is: zero when it is not a replica, or when it
/// has replayed everything it received; else the time since the last transaction it
/// replayed committed on the primary.
const LAG: &str = include_str!("replica/lag.sql");

/// Where reads go and how stale they may be.
#[derive(Debug, Clone, Default)]
pub struct ReplicaConfig {
    /// The replica's URL.
    pub replica_url: String,
    /// The primary's URL, read from when the replica is more than `max_lag` behind;
    /// `None`: such reads fail with [`Error::ReplicaLag`].
    pub primary_url: Option<String>,
    /// How far behind the primary the replica may be; `None`: any.
    pub max_lag: Option<Duration>,
}

/// The server a [`Reads`] reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Server {
    /// The replica, within the bound.
    Replica,
    /// The primary: the replica was too far behind.
    Primary,
}

/// Sessions on a replica and, on demand, on its primary; see the module documentation.
pub struct ReadReplica {
    replica: PgConnection,
    primary: Option<PgConnection>,
    config: ReplicaConfig,
}

impl std::fmt::Debug for ReadReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadReplica")
            .field("max_lag", &self.config.max_lag)
            .field("falls_back", &self.config.primary_url.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(QueryableByName)]
struct LagRow {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    lag_seconds: Option<f64>,
}

impl ReadReplica {
    /// Opens a read-only session on the replica (the primary's is opened when first
    /// needed).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty URL or a zero `max_lag`; [`Error::Connection`]
    /// when the replica cannot be reached.
    pub fn connect(config: ReplicaConfig) -> Result<Self> {
        if config.replica_url.trim().is_empty() {
            return Err(Error::invalid("replica_url", "must not be empty"));
        }
        if config
            .primary_url
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            return Err(Error::invalid("primary_url", "must not be empty"));
        }
        if config.max_lag.is_some_and(|l| l.is_zero()) {
            return Err(Error::invalid(
                "max_lag",
                "must be positive (a replica is never exactly current)",
            ));
        }
        let replica = read_only(db::connect(&config.replica_url)?)?;
        Ok(ReadReplica {
            replica,
            primary: None,
            config,
        })
    }

    /// How far behind its primary the replica is now: zero when it has replayed all it
    /// received (or is not a replica at all), else the time since the primary committed
    /// the last transaction it replayed; [`Duration::MAX`] when it is behind and has
    /// replayed no transaction since it started (unknown, so beyond any bound).
    ///
    /// # Errors
    /// Database errors of the replica.
    pub fn lag(&mut self) -> Result<Duration> {
        let row: LagRow = Prepared {
            sql: LAG,
            params: &[],
        }
        .get_result(&mut self.replica)?;
        Ok(row
            .lag_seconds
            .map_or(Duration::MAX, |s| Duration::from_secs_f64(s.max(0.0))))
    }

    /// Reads for now: on the replica when it is within `max_lag`, else on the primary.
    ///
    /// # Errors
    /// [`Error::ReplicaLag`] when the replica is too far behind and no primary was given;
    /// [`Error::Connection`] when the primary cannot be reached.
    pub fn reads(&mut self) -> Result<Reads<'_>> {
        let lag = self.lag()?;
        let within = self.config.max_lag.is_none_or(|max| lag <= max);
        if within {
            return Ok(Reads {
                conn: &mut self.replica,
                server: Server::Replica,
                replica_lag: lag,
            });
        }
        let Some(url) = self.config.primary_url.as_deref() else {
            return Err(Error::ReplicaLag {
                lag,
                max_lag: self.config.max_lag.unwrap_or_default(),
            });
        };
        let primary = match &mut self.primary {
            Some(conn) => conn,
            none => none.insert(read_only(db::connect(url)?)?),
        };
        Ok(Reads {
            conn: primary,
            server: Server::Primary,
            replica_lag: lag,
        })
    }
}

/// Makes every transaction of the session read-only: a write that reached it anyway
/// would be refused by the server.
fn read_only(mut conn: PgConnection) -> Result<PgConnection> {
    diesel::select(crate::sql_fns::set_config(
        "default_transaction_read_only",
        "on",
        false,
    ))
    .execute(&mut conn)?;
    Ok(conn)
}

/// A read-only session for a run of reads, from [`ReadReplica::reads`]: read drivers
/// only.
pub struct Reads<'r> {
    conn: &'r mut PgConnection,
    server: Server,
    replica_lag: Duration,
}

impl std::fmt::Debug for Reads<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reads")
            .field("server", &self.server)
            .field("replica_lag", &self.replica_lag)
            .finish_non_exhaustive()
    }
}

impl Reads<'_> {
    /// The server these reads go to.
    pub fn server(&self) -> Server {
        self.server
    }

    /// How far behind the replica was when these reads were handed out.
    pub fn replica_lag(&self) -> Duration {
        self.replica_lag
    }

    /// The analytics queries, on this session.
    pub fn analytics(&mut self) -> AnalyticsReadDriver<'_> {
        AnalyticsReadDriver::new(self.conn)
    }

    /// Runs `f` in one read-only transaction with a repeatable-read snapshot, so that
    /// several reads see the same data. `E` is the caller's error, as in Diesel's
    /// `transaction`.
    ///
    /// # Errors
    /// What `f` returns, and database errors.
    pub fn snapshot<T, E>(&mut self, f: impl FnOnce(&mut Reads<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<diesel::result::Error>,
    {
        let (server, replica_lag) = (self.server, self.replica_lag);
        self.conn
            .build_transaction()
            .read_only()
            .repeatable_read()
            .run(|conn| {
                f(&mut Reads {
                    conn,
                    server,
                    replica_lag,
                })
            })
    }

    /// The session, for the crate's own read paths (the detector's spend inputs).
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        self.conn
    }
}
