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
//! same error naming its key. The server hooks it defines (`post_fork`,
//! `pre_request`, `when_ready`, ...) go back by name: each worker runs the
//! file again to get its hooks, and the master runs an arbiter hook in a
//! short-lived child (src/wsgi/hooks.rs). Names Gunicorn knows but
//! ferricorn does not (`worker_class`, TLS, statsd, ...)
//! go back with their values to
//! src/gunicorn_only.rs, which warns about most and refuses a few (TLS,
//! daemon, an ASGI worker class); any other name (imports, helpers) is
//! ignored, as Gunicorn ignores it.

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
    "permit_unconventional_http_method",
    "casefold_http_method",
    "forwarded_allow_ips",
    "secure_scheme_headers",
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
    "initgroups",
    "capture_output",
    "reload",
    "reload_extra_files",
    "user",
    "group",
    "umask",
    "pidfile",
    "proc_name",
    "body_buffer_size",
    "limit_request_body",
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

# Gunicorn converts text for its number and boolean settings (int(v, 0);
# "true"/"false"), so a value computed from the environment works:
# workers = os.environ.get("WEB_CONCURRENCY", "2")
_INTS = {"workers", "threads", "worker_connections", "backlog", "keepalive", "timeout",
         "graceful_timeout", "max_requests", "max_requests_jitter", "limit_request_line",
         "limit_request_fields", "limit_request_field_size", "body_buffer_size",
         "limit_request_body"}
_BOOLS = {"preload_app", "preload", "reuse_port", "initgroups", "capture_output", "reload",
          "permit_unconventional_http_method", "casefold_http_method"}

def _coerce(key, v):
    if not isinstance(v, str):
        return v
    t = v.strip()
    if key in _INTS:
        try:
            return int(t, 0)
        except ValueError:
            return v  # the error names the key
    if key in _BOOLS and t.lower() in ("true", "false"):
        return t.lower() == "true"
    return v

def evaluate(location, known, gunicorn_only, hooks_module):
    if location.startswith("python:"):
        import os, sys
        sys.path.insert(0, os.getcwd())
        ns = runpy.run_module(location[len("python:"):], run_name="__config__")
    else:
        ns = runpy.run_path(location, run_name="__config__")
    lines, ignored, hooks = [], [], []
    for k, v in ns.items():
        if k in hooks_module.HOOKS and callable(v):
            hooks.append(hooks_module.check(k, v))
        elif k in hooks_module.HOOKS and v is not None:
            # Gunicorn's validate_callable: "Value is not callable".
            hooks.append("!%s:must be a function; %r is not callable" % (k, v))
        elif k in known:
            if v is not None:
                lines.append("%s = %s" % (k, _toml(k, _coerce(k, v))))
        elif k in gunicorn_only and v is not None:
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif callable(v):
                v = "<%s>" % getattr(v, "__name__", "callable")
            ignored.append((k, " ".join(str(v).split())))
    return "\n".join(lines) + "\n", ignored, hooks
"#;

/// Where the config comes from: `-c PATH.py` (or `file:PATH.py`), or
/// `-c python:MODULE`, imported from the working directory or sys.path.
pub enum Source {
    File(std::path::PathBuf),
    Module(String),
}

/// What a Python config file set: TOML text of the known settings, the
/// Gunicorn-only ones it set, by name and value (src/gunicorn_only.rs judges
/// them), and the worker hooks it defines (src/wsgi/hooks.rs).
pub struct Evaluated {
    pub toml: String,
    pub gunicorn_only: Vec<(String, String)>,
    /// Hook names; one given with the wrong number of parameters is
    /// `Err((name, reason))`.
    pub hooks: Result<Vec<String>, (String, String)>,
}

/// A Python config's worker hooks: where the workers run the file again to
/// get them, and their names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    /// An absolute path, or `python:MODULE`.
    pub location: String,
    pub names: Vec<String>,
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
            // The file runs where ferricorn was started, on a HUP too (the
            // master has moved to --chdir by then): its relative paths and
            // `python:MODULE` mean what they meant at the start.
            let _ = std::env::set_current_dir(crate::config::start_dir());
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
                    let (first, rest) = out.split_once('\n').unwrap_or(("", ""));
                    let (second, toml) = rest.split_once('\n').unwrap_or(("", ""));
                    let fields: Vec<&str> = first.split('\t').collect();
                    let mut hooks = Ok(Vec::new());
                    for h in second.split('\t').filter(|h| !h.is_empty()) {
                        match (h.strip_prefix('!'), &mut hooks) {
                            (Some(bad), Ok(_)) => {
                                let (name, why) = bad.split_once(':').unwrap_or((bad, ""));
                                hooks = Err((name.to_string(), why.to_string()));
                            }
                            (None, Ok(names)) => names.push(h.to_string()),
                            (_, Err(_)) => {}
                        }
                    }
                    Ok(Evaluated {
                        toml: toml.to_string(),
                        gunicorn_only: fields
                            .chunks_exact(2)
                            .map(|nv| (nv[0].to_string(), nv[1].to_string()))
                            .collect(),
                        hooks,
                    })
                }
                WaitStatus::Exited(..) => Err(out.trim_end().to_string()),
                other => Err(format!("evaluating it ended with {other:?}")),
            }
        }
    }
}

/// In the child: the first line of the result holds the Gunicorn-only
/// settings (name, tab, value, tab, ...: the values have no tab nor
/// newline), the second the worker hooks (tab-separated), the rest is the
/// TOML.
fn run_in_child(
    source: &Source,
    site_packages: Option<&std::path::Path>,
) -> Result<String, String> {
    Python::initialize();
    Python::attach(|py| {
        let run = || -> PyResult<String> {
            if let Some(sp) = site_packages {
                // the app's venv, as the venv Gunicorn runs from
                crate::wsgi::add_site_dir(py, sp)?;
            }
            let module = PyModule::from_code(
                py,
                &std::ffi::CString::new(EVALUATE).expect("no NUL in the evaluator"),
                c"ferricorn_pyconfig.py",
                c"ferricorn_pyconfig",
            )?;
            let gunicorn_only: Vec<&str> = crate::gunicorn_only::SETTINGS
                .iter()
                .map(|s| s.name)
                .collect();
            let (toml, given, hooks): (String, Vec<(String, String)>, Vec<String>) = module
                .getattr("evaluate")?
                .call1((
                    match source {
                        Source::File(p) => p.display().to_string(),
                        Source::Module(m) => format!("python:{m}"),
                    },
                    KNOWN.to_vec(),
                    gunicorn_only,
                    crate::wsgi::hooks::module(py)?,
                ))?
                .extract()?;
            let first: Vec<String> = given.into_iter().flat_map(|(n, v)| [n, v]).collect();
            let hooks: Vec<String> = hooks.iter().map(|h| h.replace(['\t', '\n'], " ")).collect();
            Ok(format!(
                "{}\n{}\n{toml}",
                first.join("\t"),
                hooks.join("\t")
            ))
        };
        run().map_err(|e| crate::wsgi::format_py_err(py, &e))
    })
}
