//! A throw-away PostgreSQL cluster for the tests: `initdb` and `postgres` from the
//! machine's PostgreSQL on a temp dir and a free loopback port, one cluster per
//! test binary, one fresh database per test.
//!
//! `initdb` refuses to run as root, so as root the cluster runs as an
//! unprivileged user (`truce-pg`), created if missing. A watchdog stops the
//! cluster once the test binary is gone and removes its directory. A machine without PostgreSQL fails the
//! test that needs it, saying how to get it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The user the cluster runs as when the tests run as root.
const CLUSTER_USER: &str = "truce-pg";

/// A running cluster: where to connect.
pub struct Cluster {
    pub port: u16,
    /// The watchdog shell running the server (it ends with this binary).
    _watchdog: std::process::Child,
    _dir: tempfile::TempDir,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The cluster of this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(start)
}

/// A connection URL to a database of its own for one test.
pub fn fresh_database() -> String {
    let cluster = cluster();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    run_as_cluster_user(
        Command::new(tool("psql"))
            .args(["-h", "127.0.0.1", "-p", &cluster.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-q", "-c"])
            .arg(format!("CREATE DATABASE {name}")),
    );
    format!(
        "postgres://postgres@127.0.0.1:{}/{name}?connect_timeout=5",
        cluster.port
    )
}

/// Runs `sql` as the cluster's superuser (for what only an operator can do to
/// a database: refuse its connections, end its sessions).
pub fn as_superuser(sql: &str) {
    as_superuser_on("postgres", sql);
}

/// Runs `sql` as the cluster's superuser in database `name`.
pub fn as_superuser_on(name: &str, sql: &str) {
    run_as_cluster_user(
        Command::new(tool("psql"))
            .args(["-h", "127.0.0.1", "-p", &cluster().port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                name,
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
            ])
            .arg(sql),
    );
}

/// Database `name` as `pg_dump` writes it out (data included), to search
/// for what must never be stored.
pub fn dump(name: &str) -> Vec<u8> {
    let mut command = Command::new(tool("pg_dump"));
    command
        .args(["-h", "127.0.0.1", "-p", &cluster().port.to_string()])
        .args(["-U", "postgres", "-d", name]);
    let output = as_cluster_user(&mut command).output().expect("run pg_dump");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A session of the shared cluster holding database `name`'s commit row (the
/// lock every write transaction takes first) for `seconds`; returns once it
/// holds it.
pub fn hold_commit_row(name: &str, seconds: f64) -> LockHolder {
    let mut command = Command::new(tool("psql"));
    command
        .args(["-h", "127.0.0.1", "-p", &cluster().port.to_string()])
        .args(["-U", "postgres", "-d", name, "-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!(
            "BEGIN; SELECT 1 FROM truce_commit FOR UPDATE; SELECT pg_sleep({seconds}) AS holding_commit_row; COMMIT;"
        ))
        .stdout(std::process::Stdio::null());
    let mut child = command.spawn().expect("run psql");
    // Held once the session is asleep inside its transaction.
    for _ in 0..300 {
        let asleep = Command::new(tool("psql"))
            .args(["-h", "127.0.0.1", "-p", &cluster().port.to_string()])
            .args(["-U", "postgres", "-d", name, "-tA", "-c"])
            .arg("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%AS holding_commit_row%' AND wait_event = 'PgSleep'")
            .output()
            .expect("run psql");
        if String::from_utf8_lossy(&asleep.stdout).trim() == "1" {
            return LockHolder {
                child,
                database: name.to_owned(),
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the commit row was never held");
}

/// A session holding a commit row; see [`hold_commit_row`].
pub struct LockHolder {
    child: std::process::Child,
    database: String,
}

impl LockHolder {
    /// Waits until a writer waits for the row (its batch has begun, so what
    /// is queued from now on goes into the next batch).
    pub fn wait_for_a_writer(&self) {
        for _ in 0..300 {
            let waiting = Command::new(tool("psql"))
                .args(["-h", "127.0.0.1", "-p", &cluster().port.to_string()])
                .args(["-U", "postgres", "-d", &self.database, "-tA", "-c"])
                .arg("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                .output()
                .expect("run psql");
            if String::from_utf8_lossy(&waiting.stdout).trim() != "0" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no writer ever waited for the commit row");
    }

    /// Waits for the session to end (and the lock to go).
    pub fn wait(mut self) {
        let status = self.child.wait().expect("wait for psql");
        assert!(status.success(), "the lock holder failed");
    }
}

/// The database name of a URL made by [`fresh_database`].
pub fn database_of(url: &str) -> &str {
    let tail = url.rsplit('/').next().unwrap_or_default();
    tail.split('?').next().unwrap_or_default()
}

/// The path of a PostgreSQL program, or a failure saying how to get it.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not on the PATH: the PostgreSQL tests need a PostgreSQL 15 server \
             (Debian: `apt-get install -y postgresql-15 postgresql-client-15`, then put \
             /usr/lib/postgresql/15/bin on the PATH)"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `command` as the cluster's user (as root) or as ourselves; fails the
/// test with its output when it fails.
fn run_as_cluster_user(command: &mut Command) {
    let mut command = as_cluster_user(command);
    let output = command.output().expect("run a PostgreSQL program");
    assert!(
        output.status.success(),
        "{:?} failed: {}{}",
        command,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `command` to run as the cluster's user (as root) or as ourselves.
fn as_cluster_user(command: &mut Command) -> Command {
    if is_root() {
        let mut wrapped = Command::new("runuser");
        wrapped
            .args(["-u", CLUSTER_USER, "--"])
            .arg(command.get_program())
            .args(command.get_args());
        wrapped
    } else {
        std::mem::replace(command, Command::new("true"))
    }
}

/// Makes sure the cluster's user exists and owns `dir`.
fn prepare_user(dir: &Path) {
    let exists = Command::new("id")
        .arg(CLUSTER_USER)
        .output()
        .is_ok_and(|out| out.status.success());
    if !exists {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(CLUSTER_USER)
            .status()
            .expect("run useradd");
        // Another test binary may have made it meanwhile.
        let made = Command::new("id")
            .arg(CLUSTER_USER)
            .output()
            .is_ok_and(|out| out.status.success());
        assert!(
            status.success() || made,
            "cannot create the user {CLUSTER_USER}"
        );
    }
    let status = Command::new("chown")
        .args(["-R", &format!("{CLUSTER_USER}:")])
        .arg(dir)
        .status()
        .expect("run chown");
    assert!(
        status.success(),
        "cannot give {} to {CLUSTER_USER}",
        dir.display()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A new cluster's data directory in a temp dir the cluster's user owns.
fn init() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    if is_root() {
        prepare_user(dir.path());
    }
    let data = dir.path().join("data");
    run_as_cluster_user(
        Command::new(tool("initdb"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data),
    );
    (dir, data)
}

fn start() -> Cluster {
    let postgres = tool("postgres");
    let (dir, data) = init();
    let port = free_port();
    let log = dir.path().join("postgres.log");
    // The server runs under a watchdog shell that stops it (fast shutdown) once
    // this test binary is gone, then removes its directory: the cluster lives in
    // a static, whose temp dir is never dropped, and a run's WAL fills gigabytes.
    let script = format!(
        "{postgres} -D {data} -p {port} -k {sock} -c listen_addresses=127.0.0.1 \
         -c fsync=off -c max_connections=400 > {log} 2>&1 & pg=$!; \
         while [ -d /proc/{parent} ] && kill -0 $pg 2>/dev/null; do sleep 1; done; \
         kill -INT $pg 2>/dev/null; wait $pg; rm -rf {dir}",
        postgres = postgres.display(),
        data = data.display(),
        sock = dir.path().display(),
        log = log.display(),
        parent = std::process::id(),
        dir = dir.path().display(),
    );
    let mut shell = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", CLUSTER_USER, "--", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    let mut watchdog = shell.spawn().expect("start postgres");
    // Ready once it accepts a connection (bounded: 30 s).
    for _ in 0..300 {
        let ready = Command::new(tool("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return Cluster {
                port,
                _watchdog: watchdog,
                _dir: dir,
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = watchdog.kill();
    let _ = watchdog.wait();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    panic!("the test cluster did not start:\n{logged}");
}

/// A cluster of one test's own, for what cannot be done to the shared one:
/// stopping and starting it. Stopped when dropped.
pub struct PrivateCluster {
    pub port: u16,
    data: PathBuf,
    dir: tempfile::TempDir,
}

impl PrivateCluster {
    /// A new cluster, running.
    pub fn start() -> Self {
        let (dir, data) = init();
        let cluster = Self {
            port: free_port(),
            data,
            dir,
        };
        cluster.up();
        cluster
    }

    /// A connection URL to its `postgres` database.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=5",
            self.port
        )
    }

    /// Starts the server and waits until it accepts connections.
    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run_as_cluster_user(
            Command::new(tool("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-o", &options, "-l"])
                .arg(self.dir.path().join("postgres.log"))
                .args(["-w", "start"]),
        );
    }

    /// Stops the server (fast shutdown: sessions are ended) and waits.
    pub fn down(&self) {
        run_as_cluster_user(
            Command::new(tool("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "stop"]),
        );
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let mut stop = Command::new(tool("pg_ctl"));
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        // Not run_as_cluster_user: a failure here must not panic in a drop.
        let _ = as_cluster_user(&mut stop).output();
    }
}
