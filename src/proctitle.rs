//! Process titles (`ferricorn: master [app]`, `ferricorn: worker [app]`)
//! as `ps` shows them, like Gunicorn's setproctitle.
//!
//! `ps` reads /proc/PID/cmdline, which is the argv memory of the process.
//! glibc hands (argc, argv, envp) to functions in `.init_array`, so we keep
//! argv's address from there and overwrite the argv strings in place. The
//! short name (`comm`, 15 bytes, seen by `top` and `pgrep`) is set with
//! prctl.
//!
//! A title longer than the original command line (`-c /etc/x.toml` is
//! shorter than `ferricorn: master [myproject.wsgi:application]`) also
//! takes the environment strings' space, which the kernel lays out right
//! after argv: those strings are first copied to the heap and `environ` is
//! pointed at the copies, as setproctitle(3) does. The kernel then reports
//! the whole title as the command line. (Rust's `std::env::args()` reads
//! the original argv memory, so it returns the title afterwards: take argv
//! before the first `set`, as `master::remember_exe` does.)

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

static ARGV0: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
/// Bytes of the argv strings, from argv[0] to the NUL of the last one.
static ARGV_LEN: AtomicUsize = AtomicUsize::new(0);
/// The same, extended over the environment strings that follow in memory.
static AREA_LEN: AtomicUsize = AtomicUsize::new(0);
static ENV_MOVED: AtomicBool = AtomicBool::new(false);

unsafe extern "C" {
    static mut environ: *mut *mut libc::c_char;
}

extern "C" fn capture(
    argc: libc::c_int,
    argv: *const *mut libc::c_char,
    envp: *const *const libc::c_char,
) {
    if argc <= 0 || argv.is_null() {
        return;
    }
    // SAFETY: glibc passes the real argv and envp; the strings are laid out
    // one after the other, each NUL-terminated; we only read them here.
    unsafe {
        let first = *argv;
        if first.is_null() {
            return;
        }
        let last = *argv.add(argc as usize - 1);
        let mut end = last.add(libc::strlen(last));
        ARGV0.store(first as *mut u8, Ordering::Relaxed);
        ARGV_LEN.store(end.offset_from(first) as usize, Ordering::Relaxed);
        if !envp.is_null() {
            let mut i = 0;
            loop {
                let e = *envp.add(i);
                if e.is_null() || !std::ptr::eq(e, end.add(1)) {
                    break;
                }
                end = (e as *mut libc::c_char).add(libc::strlen(e));
                i += 1;
            }
        }
        AREA_LEN.store(end.offset_from(first) as usize, Ordering::Relaxed);
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn(libc::c_int, *const *mut libc::c_char, *const *const libc::c_char) =
    capture;

/// Copy every environment string that lives in [base, base+len] to the
/// heap and point `environ` at the copies. Single-threaded callers only.
unsafe fn move_environ(base: *mut u8, len: usize) -> bool {
    let lo = base as usize;
    let hi = lo + len;
    // SAFETY (caller): no other thread reads or changes the environment.
    unsafe {
        let env = environ;
        if env.is_null() {
            return true;
        }
        let mut i = 0;
        loop {
            let e = *env.add(i);
            if e.is_null() {
                return true;
            }
            if (e as usize) >= lo && (e as usize) <= hi {
                let copy = libc::strdup(e);
                if copy.is_null() {
                    return false;
                }
                *env.add(i) = copy;
            }
            i += 1;
        }
    }
}

/// Set the title. Call only before threads start (it rewrites argv and,
/// for a long title, moves the environment).
pub fn set(title: &str) {
    let base = ARGV0.load(Ordering::Relaxed);
    let mut len = ARGV_LEN.load(Ordering::Relaxed);
    let area = AREA_LEN.load(Ordering::Relaxed);
    if !base.is_null() && len > 0 {
        if ENV_MOVED.load(Ordering::Relaxed) {
            len = area;
        } else if title.len() > len && area > len {
            // SAFETY: single-threaded (documented precondition).
            if unsafe { move_environ(base, area) } {
                ENV_MOVED.store(true, Ordering::Relaxed);
                len = area;
            }
        }
        let bytes = title.as_bytes();
        let n = bytes.len().min(len);
        // SAFETY: [base, base+len] is the original argv (and, once the
        // environment was moved, environ) string area captured above; we
        // stay inside it and end with NULs.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), base, n);
            std::ptr::write_bytes(base.add(n), 0, len + 1 - n);
        }
    }
    let short: Vec<u8> = title.bytes().filter(|&b| b != 0).take(15).collect();
    if let Ok(c) = std::ffi::CString::new(short) {
        // SAFETY: PR_SET_NAME copies at most 16 bytes from a C string.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
    }
}
