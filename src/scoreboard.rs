//! The heartbeat table: one slot per worker in shared memory, written by the
//! worker, read by the master.
//!
//! Why shared memory: Gunicorn's workers touch a temp file per request and
//! the master stats it; that is a syscall on the hot path and a disk write
//! in the worst case. Here a heartbeat is a relaxed atomic store. The table
//! lives in a memfd (not an anonymous mapping) so its fd can cross the
//! master's in-place re-exec on USR2 and the new master image re-maps the
//! same table its adopted workers keep writing.
//!
//! What the master learns from a slot: the worker booted (imported the app),
//! it is alive (beat recently), and for each application thread whether it
//! is inside an app call, since when, and on which request (for the
//! "request GET /x ran longer than 30s" message).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

/// Application threads tracked per worker; thread `i` uses sub-slot
/// `i % TRACKED_THREADS`. With more threads than this, two threads share a
/// sub-slot and a timeout on one can be masked by the other finishing.
pub const TRACKED_THREADS: usize = 16;
const DESC_LEN: usize = 116;

pub const STATE_FREE: u32 = 0;
pub const STATE_BOOTING: u32 = 1;
pub const STATE_READY: u32 = 2;
/// The worker decided to exit by itself (max_requests, --reload) and is
/// finishing its requests: the master starts its replacement at once and
/// does not count the exit as a crash.
pub const STATE_LEAVING: u32 = 3;

#[repr(C)]
pub struct ThreadSlot {
    /// Monotonic ms when the current app call started; 0 = idle.
    busy_since_ms: AtomicU64,
    desc_len: AtomicU32,
    desc: [u8; DESC_LEN],
}

#[repr(C)]
pub struct Slot {
    pid: AtomicI32,
    state: AtomicU32,
    generation: AtomicU64,
    last_beat_ms: AtomicU64,
    requests: AtomicU64,
    threads: [ThreadSlot; TRACKED_THREADS],
}

/// A mapping of the table. Cloning is not offered: each process maps once.
pub struct Scoreboard {
    base: *mut Slot,
    capacity: usize,
    fd: OwnedFd,
}

// SAFETY: every field a process touches through `base` is an atomic except
// `desc`, whose torn reads are harmless (it is only a log message).
unsafe impl Send for Scoreboard {}
unsafe impl Sync for Scoreboard {}

/// Monotonic milliseconds (the same clock in every process).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into our timespec; CLOCK_MONOTONIC exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

impl Scoreboard {
    pub fn create(capacity: usize) -> std::io::Result<Scoreboard> {
        let fd = nix::sys::memfd::memfd_create(
            c"ferricorn-scoreboard",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )?;
        let len = capacity * std::mem::size_of::<Slot>();
        nix::unistd::ftruncate(&fd, len as i64)?;
        Self::map(fd, capacity)
    }

    /// Re-map a table whose fd was inherited across exec.
    pub fn adopt(fd: RawFd, capacity: usize) -> std::io::Result<Scoreboard> {
        // SAFETY: the previous master image passed us this fd number for
        // exactly this purpose; nothing else in this process owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        Self::map(fd, capacity)
    }

    fn map(fd: OwnedFd, capacity: usize) -> std::io::Result<Scoreboard> {
        let len = capacity * std::mem::size_of::<Slot>();
        // SAFETY: a fresh shared mapping of a memfd we sized to `len`;
        // zero-filled memory is a valid `Slot` (all atomics at 0).
        let p = unsafe {
            nix::sys::mman::mmap(
                None,
                std::num::NonZeroUsize::new(len).expect("capacity > 0"),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                &fd,
                0,
            )?
        };
        Ok(Scoreboard {
            base: p.as_ptr() as *mut Slot,
            capacity,
            fd,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.capacity);
        // SAFETY: in bounds of the mapping, which lives as long as self.
        unsafe { &*self.base.add(i) }
    }

    /// Claim a free slot for a worker about to be forked.
    pub fn claim(&self, generation: u64) -> Option<usize> {
        (0..self.capacity).find(|&i| {
            let s = self.slot(i);
            if s.state.load(Ordering::Acquire) == STATE_FREE && s.pid.load(Ordering::Acquire) == 0 {
                s.generation.store(generation, Ordering::Relaxed);
                s.requests.store(0, Ordering::Relaxed);
                s.last_beat_ms.store(now_ms(), Ordering::Relaxed);
                for t in &s.threads {
                    t.busy_since_ms.store(0, Ordering::Relaxed);
                }
                s.state.store(STATE_BOOTING, Ordering::Release);
                true
            } else {
                false
            }
        })
    }

    pub fn release(&self, i: usize) {
        let s = self.slot(i);
        s.pid.store(0, Ordering::Release);
        s.state.store(STATE_FREE, Ordering::Release);
    }
}

impl Drop for Scoreboard {
    fn drop(&mut self) {
        let len = self.capacity * std::mem::size_of::<Slot>();
        // SAFETY: unmapping exactly what `map` mapped; no references outlive
        // self because `slot()` borrows self.
        unsafe {
            let _ =
                nix::sys::mman::munmap(std::ptr::NonNull::new_unchecked(self.base as *mut _), len);
        }
    }
}

impl Slot {
    pub fn set_pid(&self, pid: i32) {
        self.pid.store(pid, Ordering::Release);
    }
    pub fn state(&self) -> u32 {
        self.state.load(Ordering::Acquire)
    }
    pub fn set_ready(&self) {
        self.beat();
        self.state.store(STATE_READY, Ordering::Release);
    }
    /// Announce a planned exit (only from READY: a slot being released or
    /// reused is never marked).
    pub fn set_leaving(&self) {
        let _ = self.state.compare_exchange(
            STATE_READY,
            STATE_LEAVING,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
    pub fn beat(&self) {
        self.last_beat_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub fn beat_at(&self, ms: u64) {
        self.last_beat_ms.store(ms, Ordering::Relaxed);
    }
    pub fn last_beat_ms(&self) -> u64 {
        self.last_beat_ms.load(Ordering::Relaxed)
    }
    pub fn add_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Mark thread `t` as inside an app call on request `desc`.
    pub fn enter_app(&self, t: usize, desc_parts: &[&[u8]], now: u64) {
        let ts = &self.threads[t % TRACKED_THREADS];
        let mut n = 0;
        // SAFETY: `desc` is plain bytes in shared memory; the master may read
        // it concurrently and see a torn message, which only affects a log
        // line. We write through a raw pointer so no `&mut` aliases exist.
        let dst = ts.desc.as_ptr() as *mut u8;
        for part in desc_parts {
            let take = part.len().min(DESC_LEN - n);
            unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), dst.add(n), take) };
            n += take;
        }
        ts.desc_len.store(n as u32, Ordering::Relaxed);
        ts.busy_since_ms.store(now.max(1), Ordering::Release);
    }

    pub fn leave_app(&self, t: usize) {
        self.threads[t % TRACKED_THREADS]
            .busy_since_ms
            .store(0, Ordering::Release);
    }

    /// Whether one of the worker's first `threads` application threads is
    /// outside the app (so the worker could serve a new connection now).
    pub fn has_idle_thread(&self, threads: usize) -> bool {
        self.threads[..threads.clamp(1, TRACKED_THREADS)]
            .iter()
            .any(|t| t.busy_since_ms.load(Ordering::Relaxed) == 0)
    }

    /// The oldest app call in progress: (started ms, request description).
    pub fn oldest_busy(&self) -> Option<(u64, String)> {
        let mut best: Option<(u64, String)> = None;
        for ts in &self.threads {
            let since = ts.busy_since_ms.load(Ordering::Acquire);
            if since == 0 || best.as_ref().is_some_and(|(b, _)| *b <= since) {
                continue;
            }
            let len = (ts.desc_len.load(Ordering::Relaxed) as usize).min(DESC_LEN);
            let mut buf = vec![0u8; len];
            // SAFETY: see `enter_app`; a torn read is acceptable here.
            unsafe { std::ptr::copy_nonoverlapping(ts.desc.as_ptr(), buf.as_mut_ptr(), len) };
            best = Some((since, String::from_utf8_lossy(&buf).into_owned()));
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_across_fork() {
        let sb = Scoreboard::create(4).unwrap();
        let i = sb.claim(1).unwrap();
        // SAFETY: the test process is single-threaded enough for fork+exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                sb.slot(i).set_ready();
                sb.slot(i).enter_app(0, &[b"GET ", b"/slow"], 1234);
                sb.slot(i).add_request();
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
            }
        }
        let s = sb.slot(i);
        assert_eq!(s.state(), STATE_READY);
        assert_eq!(s.requests(), 1);
        assert_eq!(s.oldest_busy(), Some((1234, "GET /slow".to_string())));
        s.leave_app(0);
        assert_eq!(s.oldest_busy(), None);
        sb.release(i);
        assert_eq!(sb.claim(2), Some(i));
    }
}
