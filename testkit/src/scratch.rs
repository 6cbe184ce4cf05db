//! Databases of their own on a server: created, dropped, and dropped on drop.

use diesel::connection::SimpleConnection;

use crate::{Error, Result};

fn database_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Error::InvalidInput {
            field: "name",
            reason: "a database name here is 1 to 63 ASCII letters, digits and underscores",
        });
    }
    Ok(())
}

/// Creates the database `name` on the server at `admin_url` and returns its URL.
///
/// # Errors
/// [`Error::InvalidInput`] for a name that is not 1 to 63 ASCII letters, digits and
/// underscores, or an `admin_url` that is not a URL; [`Error::Costdb`] when it exists.
pub fn create_database(admin_url: &str, name: &str) -> Result<String> {
    create_database_with(admin_url, name, "")
}

/// [`create_database`] with `options`, the rest of the `CREATE DATABASE` statement (e.g.
/// `TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en'`): a constant of the caller's,
/// never input.
///
/// # Errors
/// As [`create_database`], and the server's error for options it refuses.
pub fn create_database_with(admin_url: &str, name: &str, options: &'static str) -> Result<String> {
    database_name(name)?;
    let url = url_with_database(admin_url, name)?;
    costdb::db::connect(admin_url)?
        .batch_execute(&format!("CREATE DATABASE \"{name}\" {options}"))?;
    Ok(url)
}

/// Drops the database `name` on the server at `admin_url`, ending its sessions first;
/// a database that does not exist is not an error.
pub fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    database_name(name)?;
    costdb::db::connect(admin_url)?
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))?;
    Ok(())
}

/// A database of its own that this process created on a server, dropped when the value
/// is dropped unless [`ScratchDatabase::keep`] was called. The demo and the benchmarks use
/// one so they never write into an existing database.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
    keep: bool,
}

impl ScratchDatabase {
    /// Creates `<prefix>_<UTC time>_<random>` on the server at `admin_url`.
    pub fn create(admin_url: &str, prefix: &str) -> Result<Self> {
        Self::create_with(admin_url, prefix, "")
    }

    /// [`Self::create`] with `options` for `CREATE DATABASE`, as [`create_database_with`].
    pub fn create_with(admin_url: &str, prefix: &str, options: &'static str) -> Result<Self> {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let name = format!(
            "{prefix}_{}_{}",
            chrono::Utc::now().format("%Y%m%d_%H%M%S"),
            &random[..6]
        );
        let url = create_database_with(admin_url, &name, options)?;
        Ok(ScratchDatabase {
            admin_url: admin_url.into(),
            name,
            url,
            keep: false,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Keeps the database after this value is dropped; returns its URL.
    pub fn keep(mut self) -> String {
        self.keep = true;
        std::mem::take(&mut self.url)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if !self.keep {
            let _ = drop_database(&self.admin_url, &self.name);
        }
    }
}

/// The same server as `url`, with its database replaced by `database`.
///
/// `url` is a `postgres://` or `postgresql://` URL (RFC 3986); user, password, host, port
/// and query string are kept, and the database name is percent-encoded.
///
/// # Errors
/// [`Error::InvalidInput`] for anything else, such as a key/value string
/// (`host=… dbname=…`), whose database cannot be replaced this way.
pub fn url_with_database(url: &str, database: &str) -> Result<String> {
    let not_a_url = || Error::InvalidInput {
        field: "url",
        reason: "expected a postgres://user@host:port/database URL (a key/value connection \
                 string cannot be rewritten)",
    };
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
        })
        .ok_or_else(not_a_url)?;
    // RFC 3986: the authority ends at the first '/', '?' or '#'; the path at '?' or '#'.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    if authority.contains(char::is_whitespace) {
        return Err(not_a_url());
    }
    let suffix_start = after.find(['?', '#']).unwrap_or(after.len());
    let suffix = &after[suffix_start..];
    let mut encoded = String::with_capacity(database.len());
    for b in database.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(format!("{scheme}://{authority}/{encoded}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn replaces_or_adds_the_database() {
        let cases = [
            ("postgres://u@h:5432/test", "x", "postgres://u@h:5432/x"),
            ("postgres://u@h", "x", "postgres://u@h/x"),
            (
                "postgres://u@h/db?sslmode=disable",
                "x",
                "postgres://u@h/x?sslmode=disable",
            ),
            (
                "postgresql://u:p%2Fw@h?a=b/c",
                "x",
                "postgresql://u:p%2Fw@h/x?a=b/c",
            ),
            (
                "postgres://[::1]:5/db#frag",
                "a b",
                "postgres://[::1]:5/a%20b#frag",
            ),
            ("POSTGRES://h/db", "x", "POSTGRES://h/x"),
        ];
        for (url, db, want) in cases {
            assert_eq!(url_with_database(url, db).unwrap(), want, "{url}");
        }
    }

    #[test]
    fn a_key_value_string_is_refused() {
        for url in [
            "host=h dbname=postgres",
            "mysql://h/db",
            "",
            "postgres://h h/x",
        ] {
            assert!(url_with_database(url, "x").is_err(), "{url}");
        }
    }
}
