//! `--pid FILE`, as Gunicorn's: refuse to start over a live process's pid
//! file (two instances sharing one would remove each other's), replace a
//! stale one, and on exit remove the file only if it still names us.

use std::path::Path;

/// Write our pid to `path`. Err names why not: a live process's pid is
/// there already (not ours: a USR2 re-exec keeps its pid), or the file
/// cannot be written.
pub fn create(path: &Path) -> Result<(), String> {
    let me = std::process::id();
    if let Some(pid) = read(path) {
        if pid != me && alive(pid) {
            return Err(format!(
                "Already running on PID {pid} (or pid file '{}' is stale)",
                path.display()
            ));
        }
    }
    // Written beside it and renamed: a reader never sees a half-written file.
    let tmp = path.with_file_name(format!(
        ".{}.{me}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    // -rw-r--r-- whatever the umask, as Gunicorn's.
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    std::fs::write(&tmp, format!("{me}\n"))
        .and_then(|()| std::fs::set_permissions(&tmp, mode))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write pid file {}: {e}", path.display())
        })
}

/// Remove `path` if it still holds our pid.
pub fn remove(path: &Path) {
    if read(path) == Some(std::process::id()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The pid `path` holds, if it holds one.
pub fn read(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// kill(pid, 0): the process exists (EPERM: it does, owned by another user).
fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}
