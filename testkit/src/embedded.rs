//! A throwaway PostgreSQL cluster started from the machine's own binaries.
//!
//! [`EmbeddedPostgres::start`] starts a small guardian process first, which makes a
//! temporary directory with an unpredictable name, runs `initdb` into it and starts a
//! server on a free loopback port. When running as root, the guardian and the server run as
//! the `postgres` OS user, since PostgreSQL refuses to run as root. The guardian watches a
//! pipe from this process: when the value is dropped, or the process ends in any way (also
//! killed while the cluster is still starting), the pipe closes and the guardian stops the
//! server and deletes the directory. So even a cluster kept in a `static` (as the test
//! harness does) is cleaned up.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::{Error, Result};

/// A running throwaway cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    durability: Durability,
    guardian: Child,
    lifeline: Option<ChildStdin>,
}

const MISSING_BINARIES: &str =
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH, \
in $COSTDB_PG_BIN or under /usr/lib/postgresql/*/bin: install PostgreSQL 15 or newer \
(Debian/Ubuntu: apt-get install -y postgresql) or set DATABASE_URL to a running server";

/// Folders that may hold PostgreSQL's programs: `$COSTDB_PG_BIN`, `PATH`, then Debian's
/// `/usr/lib/postgresql/<major>/bin`, newest first.
fn candidate_dirs() -> Vec<PathBuf> {
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
    dirs
}

/// The folder holding `initdb` and `pg_ctl`, searched as [`find_program`] does; where
/// they are links (as in `/usr/local/bin`), the folder they link to, which holds the
/// server's other programs (`pg_basebackup`, `pgbench`) too.
///
/// # Errors
/// [`Error::Embedded`] saying what to install when no folder has both.
pub fn find_bin_dir() -> Result<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let dir = candidate_dirs()
        .into_iter()
        .find(|d| has_both(d))
        .ok_or_else(|| Error::embedded(MISSING_BINARIES, None))?;
    Ok(std::fs::canonicalize(dir.join("initdb"))
        .ok()
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
        .filter(|real| has_both(real))
        .unwrap_or(dir))
}

/// A PostgreSQL program such as `pgbench`: in `$COSTDB_PG_BIN`, on `PATH`, or under
/// `/usr/lib/postgresql/*/bin` (newest first).
pub fn find_program(name: &str) -> Option<PathBuf> {
    candidate_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
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
            Error::embedded(
                "running as root, and PostgreSQL refuses to run as root: create a `postgres` OS \
                 user (installing the postgresql package does) or run as another user",
                None,
            )
        })
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::embedded("no free loopback port", Some(e)))?;
    Ok(listener
        .local_addr()
        .map_err(|e| Error::embedded("no free loopback port", Some(e)))?
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

/// How the guardian sets up, reports and tears down a cluster. It ignores SIGPIPE, SIGHUP
/// and SIGINT, so neither a dead parent nor a Ctrl-C in the terminal stops it halfway.
/// Arguments: bin dir, port, fsync on/off, and the port of a primary to copy (empty for a
/// new cluster by `initdb`; else `pg_basebackup -R` makes a streaming replica of it). It
/// prints the directory it made, then the exit status of the setup + pg_ctl start, then
/// waits for its stdin to close (the parent's drop or death). A line `keep` on stdin leaves
/// the cluster running; anything else stops the server and deletes the directory.
const GUARDIAN: &str = r#"
trap '' PIPE HUP INT
bin=$1 port=$2 fsync=$3 primary=$4
dir=$(mktemp -d "${TMPDIR:-/tmp}/costdb-pg-XXXXXXXXXX") || exit 1
echo "$dir"
opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=$fsync \
    -c synchronous_commit=$fsync -c full_page_writes=$fsync -c max_connections=200"
echo "$opts" >"$dir/options"
if [ -z "$primary" ]; then
    "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale --no-sync \
        >"$dir/setup.log" 2>&1
else
    "$bin/pg_basebackup" -D "$dir/data" -R -X stream -c fast -h 127.0.0.1 -p "$primary" \
        -U postgres >"$dir/setup.log" 2>&1
fi &&
"$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o "$opts" \
    >>"$dir/setup.log" 2>&1
echo "$?"
read -r order
[ "$order" = keep ] && exit 0
"$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1
rm -rf "$dir"
"#;

/// Whether the cluster flushes to disk as a production server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync`, `synchronous_commit` and `full_page_writes` off: fast, for tests.
    Throwaway,
    /// PostgreSQL's defaults (all on): for benchmarks that a user's server must match.
    Default,
}

impl EmbeddedPostgres {
    /// Creates and starts a new cluster without durability (for tests); the user
    /// `postgres` is its superuser (trust auth).
    pub fn start() -> Result<Self> {
        Self::start_with(Durability::Throwaway)
    }

    /// Creates and starts a new cluster with the given durability.
    ///
    /// # Errors
    /// [`Error::Embedded`] when the server binaries are missing, or `initdb` or the server
    /// fails (the message carries their output). Nothing is left behind then.
    pub fn start_with(durability: Durability) -> Result<Self> {
        let bin_dir = find_bin_dir()?;
        let user = server_user()?;
        Self::spawn_on_free_port(&bin_dir, user, durability, None)
    }

    /// Starts a hot-standby streaming replica of this cluster (`pg_basebackup -R`) on a
    /// port of its own, with this cluster's durability; stopped and deleted on drop like
    /// any cluster. Reads only; its replay can be paused with `pg_wal_replay_pause()`.
    ///
    /// # Errors
    /// [`Error::Embedded`] when `pg_basebackup` or the replica's server fails (the message
    /// carries their output). Nothing is left behind then.
    pub fn start_replica(&self) -> Result<Self> {
        Self::spawn_on_free_port(&self.bin_dir, self.user, self.durability, Some(self.port))
    }

    /// [`Self::spawn`] on a free port: a free port can be taken between the probe and the
    /// bind, so a few are tried.
    fn spawn_on_free_port(
        bin_dir: &Path,
        user: Option<(u32, u32)>,
        durability: Durability,
        primary: Option<u16>,
    ) -> Result<Self> {
        let mut last_error = None;
        for _ in 0..3 {
            match Self::spawn(bin_dir, user, free_port()?, durability, primary) {
                Ok(pg) => return Ok(pg),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::embedded("the server did not start", None)))
    }

    /// Starts the guardian, which makes the directory, runs initdb and starts the server:
    /// cleanup is armed before anything exists on disk.
    fn spawn(
        bin_dir: &Path,
        user: Option<(u32, u32)>,
        port: u16,
        durability: Durability,
        primary: Option<u16>,
    ) -> Result<Self> {
        let fsync = match durability {
            Durability::Throwaway => "off",
            Durability::Default => "on",
        };
        let mut guardian = command(Path::new("/bin/sh"), user)
            .arg("-c")
            .arg(GUARDIAN)
            .arg("costdb-pg-guardian")
            .arg(bin_dir)
            .arg(port.to_string())
            .arg(fsync)
            .arg(primary.map(|p| p.to_string()).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::embedded("cannot start the cluster's guardian", Some(e)))?;
        let lifeline = guardian.stdin.take();
        let mut report = BufReader::new(guardian.stdout.take().expect("piped stdout")).lines();
        let mut pg = EmbeddedPostgres {
            dir: PathBuf::new(),
            bin_dir: bin_dir.to_path_buf(),
            port,
            user,
            durability,
            guardian,
            lifeline,
        };
        let mut next_line = || report.next().and_then(|l| l.ok()).unwrap_or_default();
        let dir = next_line();
        if dir.is_empty() {
            return Err(Error::embedded(
                "cannot create a temporary directory for the cluster",
                None,
            ));
        }
        pg.dir = PathBuf::from(dir);
        if next_line() != "0" {
            let log = std::fs::read_to_string(pg.dir.join("setup.log")).unwrap_or_default();
            let server = std::fs::read_to_string(pg.dir.join("server.log")).unwrap_or_default();
            return Err(Error::embedded(
                format!("initdb, pg_basebackup or pg_ctl start failed: {log}{server}"),
                None,
            ));
        }
        Ok(pg)
    }

    /// Leaves the server running and its directory in place, and returns the directory;
    /// stop it with `pg_ctl -D <dir>/data stop` and delete the directory when done.
    pub fn keep(mut self) -> PathBuf {
        if let Some(mut pipe) = self.lifeline.take() {
            let _ = pipe.write_all(b"keep\n");
        }
        let _ = self.guardian.wait();
        std::mem::take(&mut self.dir)
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the given database on this cluster, as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The folder of the server binaries this cluster runs (`pgbench` is there too).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Stops the server (fast shutdown: sessions are ended, nothing committed is lost)
    /// and keeps the cluster, for tests of what clients do while it is down.
    pub fn stop_server(&self) -> Result<()> {
        self.pg_ctl(&["-m", "fast", "-w", "stop"])
    }

    /// Starts the server of a cluster stopped with [`Self::stop_server`], on the same port
    /// with the same settings.
    pub fn start_server(&self) -> Result<()> {
        let options = std::fs::read_to_string(self.dir.join("options"))
            .map_err(|e| Error::embedded("cannot read the cluster's server options", Some(e)))?;
        let log = self.dir.join("server.log");
        let log = log.to_str().unwrap_or_default();
        self.pg_ctl(&["-l", log, "-w", "-t", "60", "start", "-o", options.trim()])
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let out = command(&self.bin_dir.join("pg_ctl"), self.user)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::embedded("cannot run pg_ctl", Some(e)))?;
        if !out.status.success() {
            return Err(Error::embedded(
                format!(
                    "pg_ctl {} failed: {}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                None,
            ));
        }
        Ok(())
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
    }
}
