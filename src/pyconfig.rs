//! Gunicorn's configuration files are Python (`gunicorn.conf.py`): each
//! setting is a module-level name, and a value may be computed
//! (`workers = multiprocessing.cpu_count() * 2 + 1`). `-c FILE.py` runs such
//! a file the way Gunicorn does, so a Gunicorn deployment's config works as
//! it is.
//!
//! The master runs no Python (its memory stays small, its loop readable), so
//! the file runs in a forked child with the embedded CPython. The child
//! writes the names ferricorn knows back as TOML text; the config module
//! then checks that text like any TOML config file, so a bad value gets the
//! same error naming its key. Names Gunicorn knows but ferricorn does not
//! (server hooks such as `post_fork`, `worker_class`, TLS, statsd, ...) are
//! reported and ignored; any other name (imports, helpers) is ignored, as
//! Gunicorn ignores it.

use std::io::Read;

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, pipe};
use pyo3::prelude::*;

/// The settings a Python config may set: FileOptions' fields (a unit test in
/// config.rs keeps the two lists equal).
pub const KNOWN: &[&str] = &[
    "wsgi_app",
    "bind",
    "workers",
    "threads",
    "worker_connections",
    "backlog",
    "keepalive",
    "timeout",
    "graceful_timeout",
    "max_requests",
    "max_requests_jitter",
    "chdir",
    "pythonpath",
    "raw_env",
    "env",
    "virtualenv",
    "root_path",
    "limit_request_line",
    "limit_request_fields",
    "limit_request_field_size",
    "forwarded_allow_ips",
    "proxy_protocol",
    "proxy_allow_ips",
    "errorlog",
    "loglevel",
    "accesslog",
    "access_log_format",
    "log_target",
    "preload_app",
    "preload",
    "reuse_port",
    "capture_output",
    "reload",
    "user",
    "group",
    "umask",
    "pidfile",
    "proc_name",
    "body_buffer_size",
    "limit_request_body",
];

/// Gunicorn settings and server hooks that ferricorn does not have: named
/// in a warning when a config sets them.
const GUNICORN_ONLY: &[&str] = &[
    // server hooks (Python callables run by Gunicorn's arbiter and workers)
    "on_starting",
    "on_reload",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_int",
    "worker_abort",
    "pre_exec",
    "pre_request",
    "post_request",
    "child_exit",
    "worker_exit",
    "nworkers_changed",
    "on_exit",
    "ssl_context",
    // settings
    "worker_class",
    "worker_tmp_dir",
    "daemon",
    "sendfile",
    "spew",
    "initgroups",
    "tmp_upload_dir",
    "secure_scheme_headers",
    "forwarder_headers",
    "header_map",
    "strip_header_spaces",
    "permit_unconventional_http_method",
    "permit_unconventional_http_version",
    "casefold_http_method",
    "permit_obsolete_folding",
    "reload_engine",
    "reload_extra_files",
    "logger_class",
    "logconfig",
    "logconfig_dict",
    "logconfig_json",
    "syslog",
    "syslog_addr",
    "syslog_prefix",
    "syslog_facility",
    "enable_stdio_inheritance",
    "disable_redirect_access_to_syslog",
    "statsd_host",
    "statsd_prefix",
    "dogstatsd_tags",
    "keyfile",
    "certfile",
    "ssl_version",
    "cert_reqs",
    "ca_certs",
    "suppress_ragged_eofs",
    "do_handshake_on_connect",
    "ciphers",
    "paste",
    "raw_paste_global_conf",
    "default_proc_name",
];

/// Runs the file and turns its settings into TOML. Python values map to
/// TOML ones: str, int, float, bool, list/tuple, dict (inline table); None
/// means "not set".
const EVALUATE: &str = r#"
import json, runpy

def _toml(key, v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(key, x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join("%s = %s" % (json.dumps(str(k), ensure_ascii=False), _toml(key, x))
                               for k, x in v.items()) + "}"
    raise TypeError("setting %r: a %s has no config file form" % (key, type(v).__name__))

def evaluate(location, known, gunicorn_only):
    if location.startswith("python:"):
        import os, sys
        sys.path.insert(0, os.getcwd())
        ns = runpy.run_module(location[len("python:"):], run_name="__config__")
    else:
        ns = runpy.run_path(location, run_name="__config__")
    lines, ignored = [], []
    for k, v in ns.items():
        if k in known:
            if v is not None:
                lines.append("%s = %s" % (k, _toml(k, v)))
        elif k in gunicorn_only:
            ignored.append(k)
    return "\n".join(lines) + "\n", ignored
"#;

/// Where the config comes from: `-c PATH.py` (or `file:PATH.py`), or
/// `-c python:MODULE`, imported from the working directory or sys.path.
pub enum Source {
    File(std::path::PathBuf),
    Module(String),
}

/// What a Python config file set: TOML text of the known settings, and the
/// Gunicorn-only names it set (ignored).
pub struct Evaluated {
    pub toml: String,
    pub ignored: Vec<String>,
}

/// Run the config in a forked child. Err is the reason (the Python traceback
/// when the file raised).
pub fn evaluate(
    source: &Source,
    site_packages: Option<&std::path::Path>,
) -> Result<Evaluated, String> {
    let (rd, wr) = pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: Py_IsInitialized may be called at any time.
    let python_up = unsafe { pyo3::ffi::Py_IsInitialized() } != 0;
    let forked = if python_up {
        // A --preload master re-reading its config on HUP: CPython is up,
        // so fork with its before/after-fork protocol.
        crate::preload::fork()
    } else {
        // SAFETY: the master is single-threaded (settings are loaded at
        // start and on HUP, from its main loop); the child runs only its
        // own Python and then _exit()s.
        unsafe { fork() }
    };
    match forked.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(rd);
            let (code, out) = match run_in_child(source, site_packages) {
                Ok(text) => (0, text),
                Err(e) => (1, e),
            };
            let mut f = std::fs::File::from(wr);
            let _ = std::io::Write::write_all(&mut f, out.as_bytes());
            drop(f);
            // SAFETY: _exit skips the parent's atexit handlers and buffers,
            // which belong to the parent.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut out = String::new();
            let read = std::fs::File::from(rd).read_to_string(&mut out);
            let status = waitpid(child, None).map_err(|e| format!("waitpid: {e}"))?;
            read.map_err(|e| format!("reading the evaluated config: {e}"))?;
            match status {
                WaitStatus::Exited(_, 0) => {
                    let (ignored, toml) = out.split_once('\n').unwrap_or(("", ""));
                    Ok(Evaluated {
                        toml: toml.to_string(),
                        ignored: ignored.split_whitespace().map(str::to_string).collect(),
                    })
                }
                WaitStatus::Exited(..) => Err(out.trim_end().to_string()),
                other => Err(format!("evaluating it ended with {other:?}")),
            }
        }
    }
}

/// In the child: the first line of the result lists the ignored names, the
/// rest is the TOML.
fn run_in_child(
    source: &Source,
    site_packages: Option<&std::path::Path>,
) -> Result<String, String> {
    Python::initialize();
    Python::attach(|py| {
        let run = || -> PyResult<String> {
            if let Some(sp) = site_packages {
                // the app's venv, as the venv Gunicorn runs from
                py.import("site")?
                    .call_method1("addsitedir", (sp.display().to_string(),))?;
            }
            let module = PyModule::from_code(
                py,
                &std::ffi::CString::new(EVALUATE).expect("no NUL in the evaluator"),
                c"ferricorn_pyconfig.py",
                c"ferricorn_pyconfig",
            )?;
            let (toml, ignored): (String, Vec<String>) = module
                .getattr("evaluate")?
                .call1((
                    match source {
                        Source::File(p) => p.display().to_string(),
                        Source::Module(m) => format!("python:{m}"),
                    },
                    KNOWN.to_vec(),
                    GUNICORN_ONLY.to_vec(),
                ))?
                .extract()?;
            Ok(format!("{}\n{toml}", ignored.join(" ")))
        };
        run().map_err(|e| crate::wsgi::format_py_err(py, &e))
    })
}
