//! Sharing new connections evenly between workers.
//!
//! Why this exists: every worker waits on the same listening sockets with
//! `EPOLLEXCLUSIVE`, and the kernel wakes one waiting worker per new
//! connection. But when many connections arrive at once (a proxy opening
//! its pool, a load generator starting), the worker that is already running
//! accepts the next one before the sibling the kernel woke gets a CPU, and
//! takes most of the burst: wrk's 64 connections split 51/13 and even 0/64
//! between two workers. Long-lived connections keep that split for their
//! whole life, and one worker then serves most of the traffic while the
//! other idles.
//!
//! So each worker publishes, in a small table in shared memory, how many
//! connections it holds and whether it is taking new ones. A worker that,
//! after an accept, holds `SLACK` or more connections than a sibling which is
//! taking new ones and has a thread free (not inside the app) steps back
//! from the listening sockets: the next connections wake that sibling. The
//! step back ends as soon as the worker is no longer ahead, when
//! connections are still queued a millisecond later (the sibling is busy
//! after all: a long batch of 1 MiB responses, say), and after `PAUSE_MS`
//! at the latest; so nothing waits long on a sibling, and whatever is left
//! in the accept queue is ours again. A worker that is not ahead takes up to
//! 16 connections per wake-up and serves them after taking them, takes new
//! connections before the rest of its batch of events, and looks whether to
//! come back after each event it serves, not only after the batch: 64
//! connections to a 1 MiB endpoint were all taken, evenly, within 66-94 ms;
//! 200-250 ms when a stepped-back worker looked again only between batches.
//!
//! Only the workers of one master image see each other: after an in-place
//! upgrade the adopted workers keep the old table, which only means they
//! are not balanced against the new ones while they drain.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::scoreboard::Scoreboard;

/// How many connections a worker may hold beyond a sibling that could take
/// the next one before it steps back.
const SLACK: u32 = 2;
/// The longest step back.
pub const PAUSE_MS: u64 = 5;

/// One worker's entry, at the same index as its scoreboard slot. A cache
/// line each: a worker writes its own on every accept and close.
#[repr(C, align(64))]
struct Entry {
    live: AtomicU32,
    /// One of the `Taking` values.
    taking: AtomicU32,
}

/// Whether a worker takes new connections, as its siblings see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Taking {
    /// Not now: booting, full, or draining. Not a place to send connections.
    No = 0,
    Yes = 1,
    /// Stepped back in favour of a sibling, for a few milliseconds at most:
    /// still counted as a place for connections, so that two workers that
    /// step back in turn during a burst do not leave all of it to a third
    /// (or to the first to come back).
    SteppedBack = 2,
}

struct Table {
    /// Entries at or past this index were never handed out.
    used: &'static AtomicU32,
    entries: &'static [Entry],
}

static TABLE: OnceLock<Table> = OnceLock::new();

/// Map the table (the master, before its first fork; workers inherit it).
pub fn init(capacity: usize) -> std::io::Result<()> {
    if TABLE.get().is_some() {
        return Ok(());
    }
    // Entry 0 of the mapping holds the `used` counter; workers' entries follow.
    let len = (capacity + 1) * std::mem::size_of::<Entry>();
    // SAFETY: a fresh shared anonymous mapping of `len` bytes, zero-filled,
    // which is a valid array of entries (all atomics at 0). It is never
    // unmapped, so the 'static references below stay valid.
    let base = unsafe {
        nix::sys::mman::mmap_anonymous(
            None,
            std::num::NonZeroUsize::new(len).expect("len > 0"),
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_SHARED,
        )?
    };
    // SAFETY: `base` points at capacity + 1 zeroed entries (above).
    let all: &'static [Entry] =
        unsafe { std::slice::from_raw_parts(base.as_ptr() as *const Entry, capacity + 1) };
    let _ = TABLE.set(Table {
        used: &all[0].live,
        entries: &all[1..],
    });
    Ok(())
}

/// Clear entry `i` for a worker about to start in that slot, or one that
/// exited (the master, on claim and on reap).
pub fn reset(i: usize) {
    let Some(t) = TABLE.get() else { return };
    let Some(e) = t.entries.get(i) else { return };
    e.taking.store(Taking::No as u32, Ordering::Relaxed);
    e.live.store(0, Ordering::Relaxed);
    t.used.fetch_max(i as u32 + 1, Ordering::Relaxed);
}

/// See `Mine::standing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A sibling that could take the next connection holds SLACK fewer:
    /// step back.
    Ahead,
    /// Siblings could take connections, none far behind: go on accepting.
    Level,
    /// Siblings take connections, but none could take one now (all busy in
    /// the app): take one at a time, so that those coming free get a share.
    Alone,
    /// No sibling takes connections at all (one worker, or the others are
    /// booting, full or draining): nobody to share with.
    Only,
}

/// A worker's view of the table: its own entry to write, its siblings' to read.
pub struct Mine {
    index: usize,
    threads: usize,
    scoreboard: &'static Scoreboard,
}

impl Mine {
    /// `None` when the master mapped no table (nothing to balance against).
    pub fn new(index: usize, threads: usize, scoreboard: &'static Scoreboard) -> Option<Mine> {
        let t = TABLE.get()?;
        t.entries.get(index)?;
        Some(Mine {
            index,
            threads,
            scoreboard,
        })
    }

    fn entries(&self) -> &'static [Entry] {
        TABLE.get().expect("checked in new").entries
    }

    pub fn set_live(&self, n: usize) {
        self.entries()[self.index]
            .live
            .store(n.min(u32::MAX as usize) as u32, Ordering::Relaxed);
    }

    pub fn set_taking(&self, t: Taking) {
        self.entries()[self.index]
            .taking
            .store(t as u32, Ordering::Relaxed);
    }

    /// Where a worker holding `live` connections stands against the
    /// siblings that could take a connection now: ones that take
    /// connections (or stepped back for a moment) and have a thread that is
    /// not inside the app.
    pub fn standing(&self, live: usize) -> Standing {
        let t = TABLE.get().expect("checked in new");
        let live = live.min(u32::MAX as usize) as u32;
        let used = (t.used.load(Ordering::Relaxed) as usize).min(t.entries.len());
        let mut any = false;
        let mut taking = false;
        for (i, e) in t.entries[..used].iter().enumerate() {
            if i == self.index || e.taking.load(Ordering::Relaxed) == Taking::No as u32 {
                continue;
            }
            taking = true;
            let available = i < self.scoreboard.capacity()
                && self.scoreboard.slot(i).has_idle_thread(self.threads);
            if !available {
                continue;
            }
            if e.live.load(Ordering::Relaxed) + SLACK <= live {
                return Standing::Ahead;
            }
            any = true;
        }
        if any {
            Standing::Level
        } else if taking {
            Standing::Alone
        } else {
            Standing::Only
        }
    }

    /// Whether to leave the next connections to a sibling (see `standing`).
    /// The worker holding the fewest is never ahead, so one of them always
    /// takes part, or comes back within PAUSE_MS.
    pub fn ahead(&self, live: usize) -> bool {
        self.standing(live) == Standing::Ahead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ahead_only_of_an_accepting_sibling_with_fewer_connections() {
        let sb: &'static Scoreboard = Box::leak(Box::new(Scoreboard::create(8).unwrap()));
        init(8).unwrap();
        let (a, b) = (sb.claim(1).unwrap(), sb.claim(1).unwrap());
        reset(a);
        reset(b);
        let ma = Mine::new(a, 1, sb).unwrap();
        let mb = Mine::new(b, 1, sb).unwrap();
        mb.set_live(3);
        // b is not taking connections: a keeps accepting however many it holds.
        assert!(!ma.ahead(40));
        assert_eq!(ma.standing(40), Standing::Only);
        mb.set_taking(Taking::Yes);
        assert!(!ma.ahead(4), "one ahead of b is within the slack");
        assert_eq!(ma.standing(4), Standing::Level);
        assert_eq!(ma.standing(0), Standing::Level);
        assert!(ma.ahead(5));
        // b is inside the app on its only thread: not a candidate.
        sb.slot(b).enter_app(0, &[b"GET /slow"], 1);
        assert!(!ma.ahead(5));
        assert_eq!(ma.standing(5), Standing::Alone);
        sb.slot(b).leave_app(0);
        assert!(ma.ahead(5));
        mb.set_taking(Taking::SteppedBack);
        assert!(ma.ahead(5), "b stepped back for a moment only");
        mb.set_taking(Taking::Yes);
        // Symmetric, and a worker never balances against itself: with only
        // b taking connections, b is ahead of no one however many it holds.
        ma.set_taking(Taking::Yes);
        ma.set_live(0);
        assert!(mb.ahead(2));
        assert!(!mb.ahead(1), "below the slack");
        ma.set_taking(Taking::No);
        assert!(!mb.ahead(40));
        assert_eq!(mb.standing(40), Standing::Only);
        reset(b);
        assert!(!ma.ahead(5), "a reset entry is not taking connections");
    }
}
