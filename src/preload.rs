//! `--preload`: import the app once in the master, before forking, so the
//! workers share its memory copy-on-write.
//!
//! `gc.freeze()` moves every object alive at fork time into a permanent
//! generation the collector never walks, so a worker's GC does not touch
//! (and so copy) the shared pages. Forking with CPython loaded follows the
//! interpreter's protocol: PyOS_BeforeFork / AfterFork_Parent / _Child.

use nix::unistd::{ForkResult, fork as raw_fork};
use pyo3::prelude::*;

use crate::config::{EXIT_APP_LOAD_ERROR, Settings};

/// Start CPython in the master and import the app. Err is the exit status
/// that says why (config.rs) and the traceback or reason.
pub fn load(s: &Settings) -> Result<Py<PyAny>, (i32, String)> {
    let boot_error = |e: String| (EXIT_APP_LOAD_ERROR, e);
    crate::wsgi::prepare_process(s).map_err(boot_error)?;
    crate::wsgi::init_interpreter(s, true).map_err(boot_error)?;
    Python::attach(|py| {
        let app = crate::wsgi::load_app(py, &s.wsgi_app)
            .map_err(|e| (e.exit_status(), e.describe(py)))?;
        let gc = py.import("gc").map_err(|e| boot_error(e.to_string()))?;
        gc.call_method0("collect")
            .map_err(|e| boot_error(e.to_string()))?;
        gc.call_method0("freeze")
            .map_err(|e| boot_error(e.to_string()))?;
        Ok(app)
    })
}

/// fork(2) with CPython's before/after-fork hooks.
pub fn fork() -> nix::Result<ForkResult> {
    Python::attach(|_py| {
        // SAFETY: the GIL is held (attach) and the master is single-threaded;
        // these are the documented calls around fork() for an embedder.
        unsafe {
            pyo3::ffi::PyOS_BeforeFork();
            let r = raw_fork();
            match r {
                Ok(ForkResult::Child) => pyo3::ffi::PyOS_AfterFork_Child(),
                _ => pyo3::ffi::PyOS_AfterFork_Parent(),
            }
            r
        }
    })
}
