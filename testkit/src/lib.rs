//! Test support for costdb: a throwaway PostgreSQL cluster started from the machine's own
//! binaries ([`EmbeddedPostgres`]), databases of their own on a server
//! ([`ScratchDatabase`]), the per-binary test server that costdb's tests use
//! ([`server()`]): the server in `DATABASE_URL`, else a throwaway cluster; and the two
//! layouts the suite runs in ([`layout()`]): plain, or partitioned by tenant.
//!
//! ```no_run
//! // A fresh database on the test server, migrated, in this run's layout.
//! let url = costdb_testkit::migrated_database();
//! let mut conn = costdb::db::connect(&url).unwrap();
//! ```
#![warn(missing_docs)]

pub mod embedded;
pub mod layout;
mod scratch;
pub mod server;

pub use embedded::{Durability, EmbeddedPostgres};
pub use layout::{layout, migrate_and_lay_out, migrated_database, partition_by_tenant, Layout};
pub use scratch::{
    create_database, create_database_with, drop_database, url_with_database, ScratchDatabase,
};
pub use server::{admin_url, fresh_database, server, ExpectedPanic};

/// What went wrong in the test support.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The throwaway local PostgreSQL could not be started.
    #[error("embedded PostgreSQL: {what}")]
    Embedded {
        /// What failed, with the server's own output where there was some.
        what: String,
        /// The operating-system error, when there was one.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A database name or URL this crate cannot use; nothing was sent to a server.
    #[error("invalid input for `{field}`: {reason}")]
    InvalidInput {
        /// Which argument.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The server refused, or could not be reached.
    #[error(transparent)]
    Costdb(#[from] costdb::Error),
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        Error::Costdb(e.into())
    }
}

impl Error {
    /// [`Error::Embedded`]: `what` failed with the machine's PostgreSQL programs.
    pub fn embedded(what: impl Into<String>, source: Option<std::io::Error>) -> Self {
        Error::Embedded {
            what: what.into(),
            source,
        }
    }
}

/// The result of this crate's calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
