//! Dropping root after the sockets are bound (`--user`, `--group`).
//! Workers drop before they import the app, so application
//! code never runs as root; the master keeps its privileges only to bind,
//! re-exec and signal.

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::Settings;

pub fn resolve_user(spec: &str) -> Result<User, String> {
    let found = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(spec),
    };
    found
        .map_err(|e| format!("looking up user {spec:?}: {e}"))?
        .ok_or_else(|| format!("no such user {spec:?}"))
}

pub fn resolve_group(spec: &str) -> Result<Gid, String> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    Group::from_name(spec)
        .map_err(|e| format!("looking up group {spec:?}: {e}"))?
        .map(|g| g.gid)
        .ok_or_else(|| format!("no such group {spec:?}"))
}

/// Switch this process to the configured user/group (no-op without them).
pub fn drop_to(s: &Settings) -> Result<(), String> {
    if s.user.is_none() && s.group.is_none() {
        return Ok(());
    }
    let parent = nix::unistd::getppid();
    let user = s.user.as_deref().map(resolve_user).transpose()?;
    let gid = match (&s.group, &user) {
        (Some(g), _) => Some(resolve_group(g)?),
        (None, Some(u)) => Some(u.gid),
        (None, None) => None,
    };
    // As Gunicorn's set_owner_process: an id we already have is not set
    // again, so `-u app` in an image that already runs as app (USER app)
    // is a no-op rather than an EPERM. The supplementary groups are set
    // only by root (who alone may): the user's with --initgroups, as
    // Gunicorn's; otherwise none (Gunicorn leaves root's own, which would
    // keep group 0 in the workers).
    let root = nix::unistd::geteuid().is_root();
    if let Some(gid) = gid {
        if root {
            match &user {
                Some(u) if s.initgroups => {
                    let name =
                        std::ffi::CString::new(u.name.as_str()).map_err(|e| e.to_string())?;
                    nix::unistd::initgroups(&name, gid).map_err(|e| format!("initgroups: {e}"))?;
                }
                _ => nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?,
            }
        }
        if root || gid != nix::unistd::getgid() || gid != nix::unistd::getegid() {
            nix::unistd::setgid(gid).map_err(|e| format!("setgid({gid}): {e}"))?;
        }
    }
    if let Some(u) = &user {
        if root || u.uid != nix::unistd::getuid() {
            nix::unistd::setuid(u.uid).map_err(|e| format!("setuid({}): {e}", u.uid))?;
        }
        // SAFETY: single-threaded here (fresh child); HOME for the app.
        unsafe { std::env::set_var("HOME", &u.dir) };
    }
    // Changing the uid/gid clears the parent-death signal (the kernel's
    // commit_creds does so): set it again, or a worker outlives a master
    // killed with SIGKILL. Then check the master did not die meanwhile.
    // SAFETY: prctl with an int argument; getppid cannot fail.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid() != parent {
        // SAFETY: leaving the forked worker before it runs anything.
        unsafe { libc::_exit(0) };
    }
    Ok(())
}

/// Validate user/group before forking anything, so a typo is a config error
/// and so is asking for a switch only root can make (rather than every
/// worker failing to start, in a loop).
pub fn check(s: &Settings) -> Result<(), String> {
    let user = s.user.as_deref().map(resolve_user).transpose()?;
    let gid = s.group.as_deref().map(resolve_group).transpose()?;
    if !nix::unistd::geteuid().is_root() {
        let uid_change = user
            .as_ref()
            .is_some_and(|u| u.uid != nix::unistd::getuid());
        let gid_change = gid.is_some_and(|g| g != nix::unistd::getgid());
        if uid_change || gid_change {
            let target: Vec<String> = [
                s.user.as_deref().map(|u| format!("user {u}")),
                s.group.as_deref().map(|g| format!("group {g}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            return Err(format!(
                "switching the workers to {} needs root, and ferricorn runs as uid {}",
                target.join(" "),
                nix::unistd::getuid()
            ));
        }
    }
    Ok(())
}

/// Give the log files to the workers' user (Gunicorn does the same), so a
/// worker that dropped privileges can reopen them on USR1. Called by the
/// master (as root) after it opened or reopened them; a no-op without
/// `--user`/`--group` or when not running as root.
pub fn chown_logs(s: &Settings) -> Result<(), String> {
    let paths = [Some(s.errorlog.as_str()), s.accesslog.as_deref()];
    chown_to_workers(
        s,
        paths
            .into_iter()
            .flatten()
            .filter(|p| *p != "-" && !p.is_empty()),
    )
}

/// Give `paths` to the user and group the workers run as (`--user`,
/// `--group`), when root starts us with them; otherwise nothing. Gunicorn
/// does this to the log files and to the unix sockets it binds, so a
/// `-m 007 -u www-data -g www-data` socket is the workers' group's.
pub fn chown_to_workers<'a>(
    s: &Settings,
    paths: impl IntoIterator<Item = &'a str>,
) -> Result<(), String> {
    if (s.user.is_none() && s.group.is_none()) || !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let user = s.user.as_deref().map(resolve_user).transpose()?;
    let uid = user.as_ref().map(|u| u.uid);
    let gid = match (&s.group, &user) {
        (Some(g), _) => Some(resolve_group(g)?),
        (None, Some(u)) => Some(u.gid),
        (None, None) => None,
    };
    for p in paths {
        nix::unistd::chown(p, uid, gid).map_err(|e| format!("chown {p}: {e}"))?;
    }
    Ok(())
}
