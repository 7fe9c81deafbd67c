//! `--reload` (development): when a Python source file the app imported
//! changes, the worker finishes its requests and exits; the master starts a
//! fresh one, which imports the new code. Like Gunicorn's reloader, but on
//! inotify instead of polling mtimes.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use pyo3::prelude::*;

const LIST_MODULE_FILES: &std::ffi::CStr = c"
import sys, sysconfig
_std = sysconfig.get_paths()['stdlib']
files = sorted({getattr(m, '__file__', None) for m in list(sys.modules.values())} - {None})
files = [f for f in files if not f.startswith(_std) and f.endswith('.py')]
";

/// `reload_extra_files`, expanded as Gunicorn expands them: Python's
/// `glob.glob(pattern, recursive=True)` for a pattern (`*`, `?`, `[`), the
/// path itself otherwise. Expanded when the worker starts, so a file created
/// later is watched from the next worker on.
const EXPAND_EXTRA_FILES: &std::ffi::CStr = c"
import glob, os
files, missing = [], []
for p in patterns:
    if glob.has_magic(p):
        files.extend(glob.glob(p, recursive=True))
    elif os.path.exists(p):
        files.append(p)
    else:
        missing.append(p)
";

fn module_files(extra: &[String]) -> Vec<String> {
    Python::attach(|py| -> PyResult<Vec<String>> {
        let globals = pyo3::types::PyDict::new(py);
        // a list of str the snippet left in `globals`
        let strings = |name: &str| -> PyResult<Vec<String>> {
            globals
                .get_item(name)?
                .map(|f| f.extract())
                .unwrap_or(Ok(Vec::new()))
        };
        py.run(LIST_MODULE_FILES, Some(&globals), None)?;
        let mut files = strings("files")?;
        if !extra.is_empty() {
            globals.set_item("patterns", extra.to_vec())?;
            py.run(EXPAND_EXTRA_FILES, Some(&globals), None)?;
            let more = strings("files")?;
            let missing = strings("missing")?;
            for m in missing {
                crate::log::warning(&format!("--reload-extra-file: {m}: no such file"));
            }
            files.extend(more);
        }
        Ok(files)
    })
    .unwrap_or_default()
}

/// Watch in a background thread; call `on_change(path)` once, then stop.
pub fn spawn(extra: &[String], on_change: impl FnOnce(&str) + Send + 'static) {
    let files = module_files(extra);
    let ino = match Inotify::init(InitFlags::IN_CLOEXEC) {
        Ok(i) => i,
        Err(e) => {
            crate::log::error(&format!("--reload: inotify: {e}"));
            return;
        }
    };
    let mut watched = std::collections::HashMap::new();
    let flags = AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_DELETE_SELF;
    for f in &files {
        if let Ok(wd) = ino.add_watch(f.as_str(), flags) {
            watched.insert(wd, f.clone());
        }
    }
    crate::log::debug(&format!("--reload: watching {} files", watched.len()));
    let _ = std::thread::Builder::new()
        .name("ferricorn-reload".into())
        .spawn(move || {
            loop {
                match ino.read_events() {
                    Ok(events) => {
                        if let Some(ev) = events.first() {
                            let path = watched.get(&ev.wd).cloned().unwrap_or_default();
                            on_change(&path);
                            return;
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        crate::log::error(&format!("--reload: reading inotify: {e}"));
                        return;
                    }
                }
            }
        });
}
