//! A throwaway PostgreSQL cluster started from the machine's own binaries.
//!
//! [`EmbeddedPostgres::start`] runs `initdb` into a fresh temporary directory and starts a
//! server on a free loopback port. When running as root it runs the server as the `postgres`
//! OS user, since PostgreSQL refuses to run as root. A small guardian process watches a pipe
//! from this process: when the value is dropped, or the process ends in any way, the pipe
//! closes and the guardian stops the server and deletes the directory. So even a cluster kept
//! in a `static` (as the test harness does) is cleaned up.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// A running throwaway cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    dir: PathBuf,
    port: u16,
    guardian: Child,
    lifeline: Option<ChildStdin>,
}

/// Where `initdb` and `pg_ctl` were found.
#[derive(Debug, Clone)]
struct Binaries {
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

const MISSING_BINARIES: &str =
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH, \
in $COSTDB_PG_BIN or under /usr/lib/postgresql/*/bin: install PostgreSQL 15 or newer \
(Debian/Ubuntu: apt-get install -y postgresql) or set DATABASE_URL to a running server";

fn find_binaries() -> Result<Binaries> {
    let in_dir = |dir: &Path| {
        let b = Binaries {
            initdb: dir.join("initdb"),
            pg_ctl: dir.join("pg_ctl"),
        };
        (b.initdb.is_file() && b.pg_ctl.is_file()).then_some(b)
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("COSTDB_PG_BIN") {
        dirs.push(d.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    // Debian keeps server binaries off PATH, one folder per major version: newest first.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    dirs.extend(versions.into_iter().map(|(_, p)| p));
    dirs.iter()
        .find_map(|d| in_dir(d))
        .ok_or_else(|| Error::Embedded(MISSING_BINARIES.into()))
}

/// The uid and gid to run the server as: `None` when not root.
fn server_user() -> Result<Option<(u32, u32)>> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse::<u32>().ok());
    if euid != Some(0) {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or_else(|| {
            Error::Embedded(
                "running as root, and PostgreSQL refuses to run as root: create a `postgres` OS \
                 user (installing the postgresql package does) or run as another user"
                    .into(),
            )
        })
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Embedded(format!("no free loopback port: {e}")))?;
    Ok(listener
        .local_addr()
        .map_err(|e| Error::Embedded(e.to_string()))?
        .port())
}

fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = user {
        cmd.gid(gid).uid(uid);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    cmd
}

fn run(mut cmd: Command, what: &str, log: Option<&Path>) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Embedded(format!("cannot run {what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if let Some(log) = log {
        detail.push_str(&std::fs::read_to_string(log).unwrap_or_default());
    }
    Err(Error::Embedded(format!("{what} failed: {detail}")))
}

impl EmbeddedPostgres {
    /// Creates and starts a new cluster; the user `postgres` is its superuser (trust auth).
    pub fn start() -> Result<Self> {
        let bins = find_binaries()?;
        let user = server_user()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("costdb-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Embedded(format!("cannot create {}: {e}", dir.display())))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| Error::Embedded(format!("cannot chown {}: {e}", dir.display())))?;
        }
        let data = dir.join("data");
        let log = dir.join("server.log");
        let started = Self::init_and_start(&bins, user, &dir, &data, &log);
        let port = match started {
            Ok(port) => port,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        // The guardian: blocks on its stdin until this process closes the pipe (drop or
        // exit), then stops the server and deletes the directory.
        let script =
            r#"cat >/dev/null; "$0" -D "$1" -m immediate -w stop >/dev/null 2>&1; rm -rf "$2""#;
        let mut guardian = command(Path::new("/bin/sh"), user)
            .arg("-c")
            .arg(script)
            .arg(&bins.pg_ctl)
            .arg(&data)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Embedded(format!("cannot start the cleanup guardian: {e}")))?;
        let lifeline = guardian.stdin.take();
        Ok(EmbeddedPostgres {
            dir,
            port,
            guardian,
            lifeline,
        })
    }

    fn init_and_start(
        bins: &Binaries,
        user: Option<(u32, u32)>,
        dir: &Path,
        data: &Path,
        log: &Path,
    ) -> Result<u16> {
        let mut initdb = command(&bins.initdb, user);
        initdb.arg("-D").arg(data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        run(initdb, "initdb", None)?;
        let mut last_error = None;
        // A free port can be taken between the probe and the bind: try a few.
        for _ in 0..3 {
            let port = free_port()?;
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
                dir.display()
            );
            let mut pg_ctl = command(&bins.pg_ctl, user);
            pg_ctl
                .arg("-D")
                .arg(data)
                .arg("-l")
                .arg(log)
                .args(["-o", &options, "-w", "-t", "60", "start"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            match run(pg_ctl, "pg_ctl start", Some(log)) {
                Ok(()) => return Ok(port),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Embedded("pg_ctl start failed".into())))
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the given database on this cluster, as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The directory holding the cluster; gone after drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        drop(self.lifeline.take()); // EOF tells the guardian to clean up
        let _ = self.guardian.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates a database named `name` on the server at `admin_url` and returns its URL.
pub fn create_database(admin_url: &str, name: &str) -> Result<String> {
    use diesel::connection::SimpleConnection;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::invalid(
            "name",
            "a database name here is ASCII letters, digits and underscores",
        ));
    }
    let mut admin = crate::db::connect(admin_url)?;
    admin.batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
    Ok(crate::db::url_with_database(admin_url, name))
}
