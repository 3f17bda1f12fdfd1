//! Faults below pegabridge under load, against `serve` processes: a PostgreSQL server of the
//! test's own restarted, and a disk of the test's own (a tmpfs) filling up under SQLite. Every
//! acknowledged event must arrive; duplicates are counted per fault and printed (the README
//! quotes them), and bounded: none may come from a store hiccup alone, since a round's
//! outcomes are recorded again rather than posted again.

use crate::pega::{await_all, start_pega, Pega};
use crate::processes::{free_port, project_dir, send_triggers, start, wait_healthy};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A PostgreSQL server of this test's own (initdb in a temporary folder, loopback only),
/// stopped when dropped. PostgreSQL refuses to run as root: it runs as `postgres`.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries (Debian's postgresql package)")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").is_file())
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        as_postgres(
            &["chown", "-R", "postgres", &dir.path().display().to_string()],
            true,
        );
        let data = dir.path().join("data");
        let initdb = bin.join("initdb").display().to_string();
        as_postgres(
            &[
                &initdb,
                "-D",
                &data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
            false,
        );
        let pg = Self { dir, bin, port };
        pg.ctl(&["start", "-w"]);
        pg
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl ACTION` on this server.
    fn ctl(&self, action: &[&str]) {
        let data = self.dir.path().join("data").display().to_string();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let ctl = self.bin.join("pg_ctl").display().to_string();
        let mut args = vec![ctl.as_str(), "-D", &data, "-l", &log, "-o", &options];
        args.extend(action);
        as_postgres(&args, false);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.ctl(&["stop", "-m", "immediate"]);
    }
}

/// Runs a command (as `postgres` unless `as_root`), failing the test with its output.
fn as_postgres(args: &[&str], as_root: bool) {
    let out = if as_root {
        Command::new(args[0]).args(&args[1..]).output()
    } else {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .output()
    }
    .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `serve` folder delivering to `pega` from the store at `store_url`.
fn serve_config(dir: &Path, port: u16, store_url: &str, pega: &Pega) -> PathBuf {
    let config = dir.join("pegabridge.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"{store_url}\"\nmin_free_mb = 0\n[pega]\nendpoint = \"{}/in\"\ntimeout_secs = 2\nlease_secs = 30\npoll_ms = 50\n[pega.retry]\nbase_ms = 50\nmax_delay_secs = 1\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pega-secret\"\n",
            pega.url
        ),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn postgresql_restarted_under_load_loses_nothing_and_sends_nothing_twice() {
    if std::env::var("PEGABRIDGE_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
        eprintln!("postgres: skipped (PEGABRIDGE_SKIP_POSTGRES=1)");
        return;
    }
    let pg = PrivatePostgres::start();
    let pega = start_pega().await;
    pega.mock.control(|b| b.delay = Duration::from_millis(2));
    let dir = project_dir();
    let port = free_port();
    let config = serve_config(dir.path(), port, &pg.url(), &pega);
    let mut server = start(&config);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    let sending = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move { send_triggers(&client, &[base], 0..3000).await }
    });
    // Restart the database while triggers come in and events go out.
    while pega.mock.event_count() < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.ctl(&["restart", "-m", "fast", "-w"]);
    let acked = sending.await.unwrap();
    let expected: HashSet<String> = acked.iter().map(|(u, _, _)| u.clone()).collect();
    let (missing, duplicates) = await_all(&pega, &expected).await;
    server.kill().unwrap();
    let _ = server.wait();
    eprintln!(
        "fault PostgreSQL restart: {} acknowledged events, {missing} missing, {duplicates} duplicates",
        expected.len()
    );
    assert!(
        expected.len() > 300,
        "load went through: {}",
        expected.len()
    );
    assert_eq!(missing, 0, "every acknowledged event reaches Pega");
    assert_eq!(duplicates, 0, "a restarted database makes no duplicate");
}

#[tokio::test]
async fn a_full_disk_under_load_loses_nothing_and_sends_nothing_twice() {
    let disk = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(disk.path())
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mounting a tmpfs of the test's own (needs root)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.path().to_owned());
    let pega = start_pega().await;
    let dir = project_dir();
    let port = free_port();
    let store = format!("sqlite://{}/full.db", disk.path().display());
    let config = serve_config(dir.path(), port, &store, &pega);
    let mut server = start(&config);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    // The endpoint is slow meanwhile, so events are in flight when the disk fills up.
    pega.mock.control(|b| b.delay = Duration::from_millis(20));
    let sending = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move { send_triggers(&client, &[base], 0..2000).await }
    });
    while pega.mock.event_count() < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Fill the disk, hold it full a moment, then free it.
    let filler = disk.path().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", filler.display()))
        .output();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::remove_file(&filler).unwrap();
    pega.mock.control(|b| b.delay = Duration::ZERO);
    let mut acked = sending.await.unwrap();
    let refused = 2000 - acked.len();
    // With room again, the store takes writes again.
    let after = send_triggers(&client, std::slice::from_ref(&base), 2000..2100).await;
    assert_eq!(
        after.len(),
        100,
        "every trigger after the disk was freed is acknowledged"
    );
    acked.extend(after);
    let expected: HashSet<String> = acked.iter().map(|(u, _, _)| u.clone()).collect();
    let (missing, duplicates) = await_all(&pega, &expected).await;
    server.kill().unwrap();
    let _ = server.wait();
    eprintln!(
        "fault full disk: {} acknowledged events ({refused} refused while full), {missing} missing, {duplicates} duplicates",
        expected.len()
    );
    assert!(
        expected.len() > 100,
        "load went through: {}",
        expected.len()
    );
    assert_eq!(missing, 0, "every acknowledged event reaches Pega");
    assert_eq!(duplicates, 0, "a full disk makes no duplicate");
}
