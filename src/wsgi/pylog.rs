//! The app's own logging, under journald: Python `logging` records and
//! `wsgi.errors` writes become native journal entries, with the Python level
//! mapped to PRIORITY and the logger name, file, line and function as fields.
//! A record with a traceback is one entry (MESSAGE holds the newlines, sent
//! in the binary-safe form), not one entry per line as a journal-connected
//! stderr would make it.
//!
//! Without the journal nothing here is installed: `wsgi.errors` is
//! `sys.stderr` (the error log) and Python's logging is left as the app set
//! it up, as in Gunicorn.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::systemd::journal::{Entry, Priority};

/// Fields an `extra` key may not replace: what every entry already has.
const OWN_FIELDS: [&str; 8] = [
    "MESSAGE",
    "PRIORITY",
    "SYSLOG_IDENTIFIER",
    "PYTHON_LOGGER",
    "WORKER_PID",
    "CODE_FILE",
    "CODE_LINE",
    "CODE_FUNC",
];

/// `_send(levelno, logger, message, pathname, lineno, funcname, extra)`;
/// `extra`: the record's non-standard attributes as (name, str(value)).
#[pyfunction]
#[pyo3(signature = (levelno, logger, message, pathname = None, lineno = 0, funcname = None, extra = Vec::new()))]
fn journal_send(
    levelno: i32,
    logger: &str,
    message: &str,
    pathname: Option<&str>,
    lineno: u32,
    funcname: Option<&str>,
    extra: Vec<(String, String)>,
) -> bool {
    let Some(j) = crate::log::journal() else {
        return false;
    };
    let mut e = Entry::new(Priority::from_python_level(levelno), message).identifier("ferricorn");
    e.push("PYTHON_LOGGER", logger);
    e.push("WORKER_PID", std::process::id().to_string());
    if let Some(p) = pathname {
        e.push("CODE_FILE", p);
        e.push("CODE_LINE", lineno.to_string());
    }
    if let Some(f) = funcname {
        e.push("CODE_FUNC", f);
    }
    for (k, v) in &extra {
        if let Some(name) = crate::systemd::journal::sanitize_field_name(k) {
            if !OWN_FIELDS.contains(&name.as_str()) {
                e.push(name, v.as_str());
            }
        }
    }
    j.send_entry(&e).is_ok()
}

/// `wsgi.errors` under journald: text is buffered until a newline (or
/// `flush()`), then each complete write becomes one entry at PRIORITY=3.
#[pyclass(module = "ferricorn", name = "JournalErrors", frozen)]
pub struct JournalErrors {
    buf: Mutex<String>,
}

#[pymethods]
impl JournalErrors {
    fn write(&self, s: &str) -> usize {
        let mut b = self.buf.lock().unwrap();
        b.push_str(s);
        if b.ends_with('\n') {
            let msg = std::mem::take(&mut *b);
            drop(b);
            send_errors(&msg);
        }
        s.len()
    }
    fn writelines(&self, lines: Vec<String>) {
        for l in lines {
            self.write(&l);
        }
    }
    fn flush(&self) {
        let msg = std::mem::take(&mut *self.buf.lock().unwrap());
        if !msg.is_empty() {
            send_errors(&msg);
        }
    }
}

/// One `wsgi.errors` entry: PRIORITY=3 (Python's ERROR), logger
/// "wsgi.errors", the trailing newline dropped.
fn send_errors(msg: &str) {
    journal_send(
        40,
        "wsgi.errors",
        msg.trim_end_matches('\n'),
        None,
        0,
        None,
        vec![],
    );
}

const HANDLER: &std::ffi::CStr = c"
import logging

# What every LogRecord has; the rest of its attributes came from `extra`.
_STANDARD = frozenset(logging.LogRecord('', 0, '', 0, '', (), None).__dict__) | {
    'message', 'asctime', 'taskName'}

class JournalHandler(logging.Handler):
    '''Sends each record to journald as one native entry (ferricorn).'''
    def emit(self, record):
        try:
            msg = self.format(record)
            extra = [(k, str(v)) for k, v in record.__dict__.items() if k not in _STANDARD]
            if not _send(record.levelno, record.name, msg, record.pathname, record.lineno,
                         record.funcName, extra):
                logging.lastResort.handle(record)
        except Exception:
            self.handleError(record)

_root = logging.getLogger()
if not _root.handlers:
    _root.addHandler(JournalHandler())
    if _root.level == logging.WARNING:
        # Python's default; keep it (INFO records stay quiet, as before).
        pass
";

/// Install the journal handler on the root logger (when it has none) and
/// return the object to use as `wsgi.errors`.
pub fn install(py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
    if crate::log::journal().is_none() {
        return Ok(None);
    }
    let globals = PyDict::new(py);
    globals.set_item("_send", wrap_pyfunction!(journal_send, py)?)?;
    py.run(HANDLER, Some(&globals), None)?;
    let errors = Bound::new(
        py,
        JournalErrors {
            buf: Mutex::new(String::new()),
        },
    )?;
    Ok(Some(errors.into_any().unbind()))
}
