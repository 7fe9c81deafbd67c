//! Process titles (`ferricorn: master [app]`, `ferricorn: worker [app]`)
//! as `ps` shows them, like Gunicorn's setproctitle.
//!
//! `ps` reads /proc/PID/cmdline, which is the argv memory of the process.
//! glibc hands (argc, argv, envp) to functions in `.init_array`, so we keep
//! argv's address from there and overwrite the argv strings in place (the
//! title is cut to the space the original command line had). The short
//! name (`comm`, 15 bytes, seen by `top` and `pgrep`) is set with prctl.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

static ARGV0: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static ARGV_LEN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn capture(
    argc: libc::c_int,
    argv: *const *mut libc::c_char,
    _envp: *const *const libc::c_char,
) {
    if argc <= 0 || argv.is_null() {
        return;
    }
    // SAFETY: glibc passes the real argv; the strings are contiguous in
    // memory, each NUL-terminated, in order.
    unsafe {
        let first = *argv;
        if first.is_null() {
            return;
        }
        let last = *argv.add(argc as usize - 1);
        let end = last.add(libc::strlen(last));
        ARGV0.store(first as *mut u8, Ordering::Relaxed);
        ARGV_LEN.store(end.offset_from(first) as usize, Ordering::Relaxed);
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn(libc::c_int, *const *mut libc::c_char, *const *const libc::c_char) =
    capture;

/// Set the title. Call only before threads start (it rewrites argv).
pub fn set(title: &str) {
    let base = ARGV0.load(Ordering::Relaxed);
    let len = ARGV_LEN.load(Ordering::Relaxed);
    if !base.is_null() && len > 0 {
        let bytes = title.as_bytes();
        let n = bytes.len().min(len);
        // SAFETY: [base, base+len] is the original argv string area
        // (captured above); we stay inside it and end with NULs.
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
