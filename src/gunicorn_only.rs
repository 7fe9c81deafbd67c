//! Gunicorn settings that ferricorn does not have.
//!
//! A Gunicorn deployment should start ferricorn with its command line and
//! its config file as they are. Most of the Gunicorn settings ferricorn
//! lacks only tune something it does its own way (`--worker-tmp-dir`: there
//! are no heartbeat files; syslog, statsd, the master-side server hooks, ...): those are
//! named in one warning and ignored. A few would make it a different server
//! than the one asked for: TLS (`certfile`, `keyfile`), `daemon`, an ASGI
//! worker class, a PasteDeploy app, the uwsgi protocol. Those stop the start
//! with the reason (exit status 2, as any bad setting) rather than serve
//! plain HTTP to TLS clients, or stay in the foreground of a script that
//! waits for the server to detach.
//!
//! The command line is cleaned of these flags before clap sees it
//! (`take_from_argv`); the config files report them by name and value
//! (config.rs, pyconfig.rs). `judge` decides for all three.

use std::ffi::OsString;

/// A Gunicorn setting ferricorn does not implement.
pub struct Setting {
    /// Its name in a config file.
    pub name: &'static str,
    /// Gunicorn's command-line flags for it.
    flags: &'static [&'static str],
    /// Whether the flag takes a value (`--worker-tmp-dir DIR`) or stands
    /// alone (`--spew`).
    takes_value: bool,
}

const fn value(name: &'static str, flags: &'static [&'static str]) -> Setting {
    Setting {
        name,
        flags,
        takes_value: true,
    }
}

const fn flag(name: &'static str, flags: &'static [&'static str]) -> Setting {
    Setting {
        name,
        flags,
        takes_value: false,
    }
}

/// Gunicorn's settings (27.0) that ferricorn does not have, server hooks
/// included (config-file only: no flags).
pub const SETTINGS: &[Setting] = &[
    // TLS
    value("certfile", &["--certfile"]),
    value("keyfile", &["--keyfile"]),
    value("ssl_version", &["--ssl-version"]),
    value("cert_reqs", &["--cert-reqs"]),
    value("ca_certs", &["--ca-certs"]),
    value("ciphers", &["--ciphers"]),
    flag("suppress_ragged_eofs", &["--suppress-ragged-eofs"]),
    flag("do_handshake_on_connect", &["--do-handshake-on-connect"]),
    // process model
    value("worker_class", &["-k", "--worker-class"]),
    value("worker_tmp_dir", &["--worker-tmp-dir"]),
    flag("daemon", &["-D", "--daemon"]),
    value("protocol", &["--protocol"]),
    value("uwsgi_allow_ips", &["--uwsgi-allow-from"]),
    value("http_protocols", &["--http-protocols"]),
    value("http2_cleartext", &["--http2-cleartext"]),
    value(
        "http2_initial_window_size",
        &["--http2-initial-window-size"],
    ),
    value(
        "http2_max_concurrent_streams",
        &["--http2-max-concurrent-streams"],
    ),
    value("http2_max_frame_size", &["--http2-max-frame-size"]),
    value(
        "http2_max_header_list_size",
        &["--http2-max-header-list-size"],
    ),
    value("http_parser", &["--http-parser"]),
    value("asgi_loop", &["--asgi-loop"]),
    value("asgi_lifespan", &["--asgi-lifespan"]),
    value(
        "asgi_disconnect_grace_period",
        &["--asgi-disconnect-grace-period"],
    ),
    value(
        "websocket_max_message_size",
        &["--websocket-max-message-size"],
    ),
    value("dirty_apps", &["--dirty-app"]),
    value("dirty_workers", &["--dirty-workers"]),
    value("dirty_threads", &["--dirty-threads"]),
    value("dirty_timeout", &["--dirty-timeout"]),
    value("dirty_graceful_timeout", &["--dirty-graceful-timeout"]),
    value("control_socket", &["--control-socket"]),
    value("control_socket_mode", &["--control-socket-mode"]),
    flag("control_socket_disable", &["--no-control-socket"]),
    // the app
    value("paste", &["--paste", "--paster"]),
    value("raw_paste_global_conf", &["--paste-global"]),
    value("tmp_upload_dir", &[]),
    // HTTP parsing: ferricorn's rules are fixed (src/http/request.rs)
    value("forwarder_headers", &["--forwarder-headers"]),
    value("header_map", &["--header-map"]),
    flag("strip_header_spaces", &["--strip-header-spaces"]),
    flag(
        "permit_unconventional_http_version",
        &["--permit-unconventional-http-version"],
    ),
    flag("permit_obsolete_folding", &["--permit-obsolete-folding"]),
    // ferricorn picks sendfile or a copy for wsgi.file_wrapper itself (docs/TUNING.md)
    flag("sendfile", &["--no-sendfile"]),
    // development
    value("reload_engine", &["--reload-engine"]),
    flag("spew", &["--spew"]),
    // logging
    value("logger_class", &["--logger-class"]),
    value("logconfig", &["--log-config"]),
    value("logconfig_dict", &[]),
    value("logconfig_json", &["--log-config-json"]),
    flag("syslog", &["--log-syslog"]),
    value("syslog_addr", &["--log-syslog-to"]),
    value("syslog_prefix", &["--log-syslog-prefix"]),
    value("syslog_facility", &["--log-syslog-facility"]),
    flag(
        "enable_stdio_inheritance",
        &["-R", "--enable-stdio-inheritance"],
    ),
    flag(
        "disable_redirect_access_to_syslog",
        &["--disable-redirect-access-to-syslog"],
    ),
    flag("enable_backlog_metric", &["--enable-backlog-metric"]),
    value("statsd_host", &["--statsd-host"]),
    value("statsd_prefix", &["--statsd-prefix"]),
    value("dogstatsd_tags", &["--dogstatsd-tags"]),
    value("default_proc_name", &[]),
    // server hooks: Python callables Gunicorn's arbiter and workers run.
    // A Python config's functions never get here: src/pyconfig.rs hands
    // them on by name (src/wsgi/hooks.rs runs them).
    value("on_starting", &[]),
    value("on_reload", &[]),
    value("when_ready", &[]),
    value("pre_fork", &[]),
    value("post_fork", &[]),
    value("post_worker_init", &[]),
    value("worker_int", &[]),
    value("worker_abort", &[]),
    value("pre_exec", &[]),
    value("pre_request", &[]),
    value("post_request", &[]),
    value("child_exit", &[]),
    value("worker_exit", &[]),
    value("nworkers_changed", &[]),
    value("on_exit", &[]),
    value("ssl_context", &[]),
    value("on_dirty_starting", &[]),
    value("dirty_post_fork", &[]),
    value("dirty_worker_init", &[]),
    value("dirty_worker_exit", &[]),
];

pub fn find(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// What to do with a Gunicorn-only setting that was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its value is what ferricorn does anyway (`worker_class = "sync"`,
    /// `daemon = False`): nothing to say.
    Same,
    /// Named in a warning, then ignored.
    Ignore,
    /// The start stops: the reason.
    Refuse(String),
}

/// `value` as given: a flag's presence is "true", `--no-sendfile` "false";
/// config values in their text form (Python's True is "True").
pub fn judge(name: &str, value: &str) -> Verdict {
    let v = value.trim();
    let truthy = !matches!(
        v.to_ascii_lowercase().as_str(),
        "" | "false" | "0" | "no" | "off" | "none" | "[]" | "{}"
    );
    match name {
        "certfile" | "keyfile" if truthy => Verdict::Refuse(
            "ferricorn does not terminate TLS: put a TLS proxy (nginx, HAProxy, ...) in front of \
             it and bind ferricorn to 127.0.0.1 or a unix socket (see DEPLOY.md: docs/ in the source, /usr/share/doc/ferricorn/ when installed)"
                .into(),
        ),
        "daemon" if truthy => Verdict::Refuse(
            "ferricorn runs in the foreground: start it under systemd (`ferricorn \
             systemd-units`), Supervisor or a container instead of daemonizing"
                .into(),
        ),
        "paste" if truthy => Verdict::Refuse(
            "PasteDeploy apps are not supported: name the app as MODULE:CALLABLE".into(),
        ),
        "protocol" if v.eq_ignore_ascii_case("uwsgi") => Verdict::Refuse(
            "ferricorn speaks HTTP only: proxy to it with proxy_pass, not uwsgi_pass".into(),
        ),
        "protocol" if v.eq_ignore_ascii_case("http") => Verdict::Same,
        "http_protocols" if v.eq_ignore_ascii_case("h1") => Verdict::Same,
        "worker_class" => worker_class(v),
        "sendfile" if truthy || v.eq_ignore_ascii_case("none") => Verdict::Same,
        "sendfile" => Verdict::Ignore,
        // A setting left at its "off" value asks for nothing.
        _ if !truthy => Verdict::Same,
        _ => Verdict::Ignore,
    }
}

/// `sync` and `gthread` are what ferricorn's workers are (with `--threads`);
/// gevent, eventlet, tornado and custom WSGI workers are served by its own
/// loop; an ASGI worker class means an ASGI app, which a WSGI server cannot
/// run.
fn worker_class(v: &str) -> Verdict {
    let lower = v.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "sync"
            | "gthread"
            | "gunicorn.workers.sync.syncworker"
            | "gunicorn.workers.gthread.threadworker"
    ) {
        Verdict::Same
    } else if ["asgi", "uvicorn", "aiohttp"]
        .iter()
        .any(|w| lower.contains(w))
    {
        Verdict::Refuse(format!(
            "{v:?} runs ASGI (asyncio) applications; ferricorn serves WSGI applications only"
        ))
    } else {
        Verdict::Ignore
    }
}

/// Judge every given setting and log one warning, `lead: names`, for those
/// ignored; Err with the first refused one's name and reason.
pub fn warn_or_refuse<'a>(
    given: impl IntoIterator<Item = (&'a str, &'a str)>,
    lead: &str,
) -> Result<(), (String, String)> {
    let given: Vec<(&str, &str)> = given.into_iter().collect();
    let ignored = sort_out(given.iter().copied())?;
    if !ignored.is_empty() {
        crate::log::warning(&format!("{lead}: {}", ignored.join(", ")));
    }
    for (name, value) in given {
        if name == "worker_class" && judge(name, value) == Verdict::Ignore {
            crate::log::warning(&format!(
                "worker_class {value:?}: ferricorn has no greenlet or async workers; a worker \
                 runs --threads app calls at once (Gunicorn's {value:?} ran up to \
                 --worker-connections), so an app that waits on I/O (outbound requests, long \
                 polling) needs --threads raised to the concurrency it needs"
            ));
        }
    }
    Ok(())
}

/// Judge every given setting: Ok with the names to warn about (in order,
/// once each), or Err with the first refused one's name and reason.
fn sort_out<'a>(
    given: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<String>, (String, String)> {
    let mut ignored: Vec<String> = Vec::new();
    for (name, value) in given {
        match judge(name, value) {
            Verdict::Same => {}
            Verdict::Ignore => {
                if !ignored.iter().any(|n| n == name) {
                    ignored.push(name.to_string());
                }
            }
            Verdict::Refuse(why) => return Err((name.to_string(), why)),
        }
    }
    Ok(ignored)
}

/// A Gunicorn-only flag found on the command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Given {
    pub name: &'static str,
    pub value: String,
}

/// Take Gunicorn's flags that ferricorn does not have out of `argv` (after
/// the program name, up to a `--`). `takes_value(flag)` says which of
/// ferricorn's own flags take a value, so a value is never mistaken for a
/// flag (`-n -k`). Err: such a flag is missing its value.
pub fn take_from_argv(
    argv: Vec<OsString>,
    takes_value: &dyn Fn(&str) -> bool,
) -> Result<(Vec<OsString>, Vec<Given>), String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut given = Vec::new();
    let mut it = argv.into_iter();
    out.extend(it.next()); // the program
    while let Some(arg) = it.next() {
        let Some(a) = arg.to_str().map(str::to_string) else {
            out.push(arg);
            continue;
        };
        if a == "--" {
            out.push(arg);
            out.extend(it);
            break;
        }
        match gunicorn_flag(&a) {
            Some((setting, inline)) => {
                let value = match (setting.takes_value, inline) {
                    (true, Some(v)) => v,
                    (true, None) => it
                        .next()
                        .and_then(|v| v.into_string().ok())
                        .ok_or_else(|| format!("{a} needs a value"))?,
                    (false, _) if setting.name == "sendfile" => "false".to_string(),
                    (false, _) => "true".to_string(),
                };
                given.push(Given {
                    name: setting.name,
                    value,
                });
            }
            None => {
                let skip_next = !a.contains('=') && takes_value(&a);
                out.push(arg);
                if skip_next {
                    out.extend(it.next());
                }
            }
        }
    }
    Ok((out, given))
}

/// The setting behind `--flag`, `--flag=VALUE`, `-k` or `-kVALUE`, with the
/// value when it is attached.
fn gunicorn_flag(a: &str) -> Option<(&'static Setting, Option<String>)> {
    let (flag, inline) = match a.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
        _ => (a, None),
    };
    if let Some(s) = SETTINGS.iter().find(|s| s.flags.contains(&flag)) {
        return Some((s, inline));
    }
    // `-kgevent`: a short flag with its value attached
    let short = a.get(..2)?;
    let s = SETTINGS
        .iter()
        .find(|s| s.takes_value && !short.starts_with("--") && s.flags.contains(&short))?;
    Some((s, Some(a[2..].to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(args: &[&str]) -> (Vec<String>, Vec<(&'static str, String)>) {
        let argv = std::iter::once("ferricorn")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let ours = |f: &str| matches!(f, "-n" | "--name" | "-b" | "-w");
        let (out, given) = take_from_argv(argv, &ours).unwrap();
        (
            out.into_iter()
                .skip(1)
                .map(|a| a.into_string().unwrap())
                .collect(),
            given.into_iter().map(|g| (g.name, g.value)).collect(),
        )
    }

    #[test]
    fn flags_and_their_values_are_taken_out() {
        let (rest, given) = strip(&[
            "-k",
            "gevent",
            "-w",
            "2",
            "--worker-tmp-dir=/dev/shm",
            "--spew",
            "-kgthread",
            "--no-sendfile",
            "app:app",
        ]);
        assert_eq!(rest, ["-w", "2", "app:app"]);
        assert_eq!(
            given,
            [
                ("worker_class", "gevent".to_string()),
                ("worker_tmp_dir", "/dev/shm".to_string()),
                ("spew", "true".to_string()),
                ("worker_class", "gthread".to_string()),
                ("sendfile", "false".to_string()),
            ]
        );
    }

    #[test]
    fn values_of_our_own_flags_and_args_after_double_dash_stay() {
        let (rest, given) = strip(&["-n", "-k", "app:app", "--", "--spew"]);
        // the names of our flags with a value come from clap: check the real list
        let ours = crate::flags_taking_a_value();
        for f in [
            "-n",
            "--name",
            "-b",
            "--bind",
            "--log-file",
            "--error-logfile",
            "-c",
        ] {
            assert!(ours.iter().any(|o| o == f), "{f} in {ours:?}");
        }
        for f in ["--proxy-protocol", "--preload", "--reload"] {
            assert!(!ours.iter().any(|o| o == f), "{f}");
        }
        assert_eq!(rest, ["-n", "-k", "app:app", "--", "--spew"]);
        assert!(given.is_empty());
        let argv = vec![OsString::from("ferricorn"), OsString::from("--statsd-host")];
        assert!(take_from_argv(argv, &|_| false).is_err());
    }

    #[test]
    fn verdicts() {
        assert_eq!(judge("worker_class", "sync"), Verdict::Same);
        assert_eq!(judge("worker_class", "gthread"), Verdict::Same);
        assert_eq!(judge("worker_class", "gevent"), Verdict::Ignore);
        assert!(matches!(
            judge("worker_class", "uvicorn.workers.UvicornWorker"),
            Verdict::Refuse(_)
        ));
        assert!(matches!(judge("worker_class", "asgi"), Verdict::Refuse(_)));
        assert!(matches!(
            judge("certfile", "/etc/ssl/x.pem"),
            Verdict::Refuse(_)
        ));
        assert_eq!(judge("certfile", "None"), Verdict::Same);
        assert!(matches!(judge("daemon", "True"), Verdict::Refuse(_)));
        assert_eq!(judge("daemon", "False"), Verdict::Same);
        assert!(matches!(judge("protocol", "uwsgi"), Verdict::Refuse(_)));
        assert_eq!(judge("protocol", "http"), Verdict::Same);
        assert_eq!(judge("sendfile", "True"), Verdict::Same);
        assert_eq!(judge("sendfile", "false"), Verdict::Ignore);
        assert_eq!(judge("worker_tmp_dir", "/dev/shm"), Verdict::Ignore);
        assert_eq!(judge("post_fork", "<function post_fork>"), Verdict::Ignore);
    }

    #[test]
    fn no_setting_is_listed_twice_nor_is_one_of_ours() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(
                SETTINGS[i + 1..].iter().all(|t| t.name != s.name),
                "{}",
                s.name
            );
            assert!(!crate::pyconfig::KNOWN.contains(&s.name), "{}", s.name);
        }
    }
}
