//! Leader election on real PostgreSQL sessions: exclusivity, release on drop and panic,
//! terminated backends, fencing terms, exact lock matching, transaction-scoped locks.
//! Each test uses lock ids of its own, so the tests run in parallel on one database.

mod common;

use std::time::Duration;

use costdb::leader::{self, LeaderGuard};
use costdb::{db, Error};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

const T: Duration = Duration::from_secs(5);

fn url() -> &'static str {
    common::database_url()
}

fn acquire(lock: i64, holder: &str) -> Option<LeaderGuard> {
    LeaderGuard::acquire(url(), lock, holder, T).unwrap()
}

fn held(lock: i64) -> bool {
    leader::is_lock_held(&mut common::conn(), lock).unwrap()
}

#[test]
fn exactly_one_contender_leads_and_the_next_term_is_higher() {
    let lock = 91_001;
    let mut a = acquire(lock, "a").expect("a leads");
    assert!(acquire(lock, "b").is_none(), "b must stand by");
    assert!(a.still_leader());
    assert!(held(lock));
    let first = a.term();
    assert!(a.release().unwrap());
    assert!(!held(lock));
    let mut b = acquire(lock, "b").expect("b leads after a released");
    assert!(b.term() > first);
    assert!(b.still_leader());
    let status = leader::lock_status(&mut common::conn(), &[lock]).unwrap();
    assert_eq!(status[0].holder_pid, Some(b.backend_pid()));
    assert_eq!(
        (status[0].term, status[0].holder.as_deref()),
        (Some(b.term()), Some("b"))
    );
}

#[test]
fn a_terminated_leader_knows_it_and_its_term_is_refused() {
    let lock = 91_002;
    let mut old = acquire(lock, "old").unwrap();
    let mut admin = common::conn();
    // Waits until the backend has exited (PostgreSQL 14+), so its lock is gone.
    diesel::sql_query("SELECT pg_terminate_backend($1, 10000)")
        .bind::<diesel::sql_types::Int4, _>(old.backend_pid())
        .execute(&mut admin)
        .unwrap();
    let new = acquire(lock, "new").expect("the lock is free after the termination");
    assert!(!old.still_leader());
    assert!(new.term() > old.term());

    let mut writer = db::connect(url()).unwrap();
    let stale = writer.transaction(|c| leader::check_term(c, lock, old.term()));
    match stale {
        Err(Error::StaleTerm {
            lock_id,
            term,
            current,
        }) => assert_eq!((lock_id, term, current), (lock, old.term(), new.term())),
        other => panic!("expected StaleTerm, got {other:?}"),
    }
    writer
        .transaction(|c| leader::check_term(c, lock, new.term()))
        .unwrap();
    assert!(matches!(
        leader::check_term(&mut writer, lock, new.term()),
        Err(Error::NoTransaction)
    ));
    drop(old); // its release fails on the dead session; the drop must not panic
    assert!(held(lock), "the new leader still leads");
}

#[test]
fn dropping_the_guard_or_panicking_in_the_work_releases_the_lock() {
    let lock = 91_003;
    drop(acquire(lock, "x").unwrap());
    assert!(!held(lock));

    let panicked = std::panic::catch_unwind(|| {
        leader::with_leader_lock::<(), Error>(url(), lock, "p", |guard| {
            assert!(guard.still_leader());
            std::panic::panic_any(common::ExpectedPanic);
        })
    });
    assert!(panicked.is_err());
    assert!(!held(lock));

    // The work's result and its own error come back unchanged; "not leader" is None.
    let ran = leader::with_leader_lock::<_, Error>(url(), lock, "w", |g| Ok(g.term())).unwrap();
    assert!(ran.is_some());
    let failed = leader::with_leader_lock::<(), Error>(url(), lock, "w", |_| {
        Err(Error::Conflict("mine".into()))
    });
    assert!(matches!(failed, Err(Error::Conflict(m)) if m == "mine"));
    let _leader = acquire(lock, "other").unwrap();
    let stood_by = leader::with_leader_lock::<_, Error>(url(), lock, "w", |_| Ok(1)).unwrap();
    assert_eq!(stood_by, None);
}

#[test]
fn no_pooled_connection_is_left_holding_a_lock() {
    let lock = 91_004;
    let pool = common::pool();
    leader::with_leader_lock::<_, Error>(url(), lock, "pool", |_| Ok(())).unwrap();
    // Every pooled session, and every other session of the database: no advisory locks.
    let mut conns: Vec<_> = (0..3).map(|_| pool.get().unwrap()).collect();
    for c in &mut conns {
        assert!(!leader::holds_lock(c, lock).unwrap());
    }
    assert!(!held(lock));
}

#[test]
fn is_lock_held_matches_the_whole_key_in_this_database_only() {
    let lock = 91_005;
    let mut other = db::connect(url()).unwrap();
    // Same low 32 bits, other high bits.
    assert!(leader::try_acquire_leader_lock(&mut other, lock + (1 << 32)).unwrap());
    // The two-key form with the same halves.
    other
        .batch_execute(&format!("SELECT pg_advisory_lock(0, {lock})"))
        .unwrap();
    // The same key in another database of the server.
    let elsewhere_url = common::fresh_database();
    let mut elsewhere = db::connect(&elsewhere_url).unwrap();
    assert!(leader::try_acquire_leader_lock(&mut elsewhere, lock).unwrap());
    assert!(!held(lock));

    let high = lock + (1 << 32);
    assert!(held(high));
    assert!(leader::holds_lock(&mut other, high).unwrap());
    assert!(!leader::holds_lock(&mut common::conn(), high).unwrap());
    // Ids of 2^32 and above, and negative ones, work.
    for id in [1 << 40, -7] {
        assert!(leader::try_acquire_leader_lock(&mut other, id).unwrap());
        assert!(held(id));
        assert!(leader::release_leader_lock(&mut other, id).unwrap());
        assert!(!held(id));
    }
    assert!(
        !leader::release_leader_lock(&mut other, lock).unwrap(),
        "never held"
    );
}

#[test]
fn the_transaction_lock_ends_with_commit_and_with_rollback() {
    let lock = 91_006;
    let mut conn = db::connect(url()).unwrap();
    assert!(matches!(
        leader::try_acquire_xact_lock(&mut conn, lock),
        Err(Error::NoTransaction)
    ));
    conn.transaction::<_, Error, _>(|c| {
        assert!(leader::try_acquire_xact_lock(c, lock)?);
        assert!(held(lock));
        // Another session cannot take it meanwhile.
        assert!(!leader::try_acquire_leader_lock(&mut common::conn(), lock)?);
        Ok(())
    })
    .unwrap();
    assert!(!held(lock));
    let rolled_back = conn.transaction::<(), Error, _>(|c| {
        assert!(leader::try_acquire_xact_lock(c, lock)?);
        Err(Error::Conflict("roll back".into()))
    });
    assert!(rolled_back.is_err());
    assert!(!held(lock));
}

#[test]
fn terms_only_grow() {
    let lock = 91_007;
    let terms: Vec<i64> = (0..5)
        .map(|i| acquire(lock, &format!("h{i}")).unwrap().term())
        .collect();
    assert!(terms.windows(2).all(|w| w[1] == w[0] + 1), "{terms:?}");
    assert!(matches!(
        LeaderGuard::acquire(url(), lock, "", T),
        Err(Error::InvalidInput {
            field: "holder",
            ..
        })
    ));
}

#[test]
fn the_known_locks_are_distinct_and_in_the_7000_range() {
    let ids: Vec<i64> = costdb::types::locks::KNOWN_LOCKS
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(ids, [7001, 7002, 7003, 7004, 7005]);
    let mut conn = common::conn();
    let status = leader::lock_status(&mut conn, &ids).unwrap();
    assert_eq!(status.len(), ids.len());
    assert!(status.iter().zip(&ids).all(|(s, id)| s.lock_id == *id));
}

/// The names of this process's threads, as the kernel has them.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

#[test]
fn a_short_timeout_holds_against_a_server_that_never_answers() {
    // A listener that completes TCP handshakes (the kernel's backlog) and never answers:
    // libpq's own connect_timeout cannot go below 2 s there.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let silent_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let timeout = Duration::from_millis(200);
    for attempt in 0..8 {
        let started = std::time::Instant::now();
        let err = LeaderGuard::acquire(&silent_url, 91_020, "silent", timeout).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, Error::Connection(_)), "{err:?}");
        assert!(
            took >= timeout && took <= timeout + Duration::from_millis(50),
            "attempt {attempt} took {took:?}"
        );
    }
    // Eight abandoned connects share a bounded set of connector threads.
    let connectors = thread_names()
        .iter()
        .filter(|n| n.as_str() == costdb::connect::CONNECTOR_THREAD)
        .count();
    assert!(
        (1..=costdb::connect::MAX_CONNECTORS).contains(&connectors),
        "{connectors} connector threads"
    );
    // The same path still reaches a live server.
    let mut guard = LeaderGuard::acquire(url(), 91_021, "live", T)
        .unwrap()
        .expect("the lock is free");
    assert!(guard.still_leader());
}
