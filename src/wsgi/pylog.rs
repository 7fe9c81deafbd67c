//! The app's own logging, under journald: Python `logging` records and
//! `wsgi.errors` writes become native journal entries, with the Python level
//! mapped to PRIORITY and the logger name, file, line and function as fields.
//! A record with a traceback is one entry (MESSAGE holds the newlines, sent
//! in the binary-safe form), not one entry per line as a journal-connected
//! stderr would make it.
//!
//! Without the journal `wsgi.errors` writes to `sys.stderr` (the error
//! log) and Python's logging is left as the app set it up, as in Gunicorn.

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
    /// The stream is the worker's, shared by every request: an app that
    /// closes it must not silence the next ones. What is buffered goes out.
    fn close(&self) {
        self.flush();
    }
    #[getter]
    fn closed(&self) -> bool {
        false
    }
    fn writable(&self) -> bool {
        true
    }
}

/// `wsgi.errors` without the journal: the worker's `sys.stderr` (the
/// error log), behind a wrapper whose `close()` only flushes. Handing out
/// `sys.stderr` itself let one request's `close()` turn every later
/// write, `wsgi.errors` and `print(file=sys.stderr)` alike, into a
/// ValueError (a 500) until the worker was replaced. Gunicorn gives each
/// request a wrapper of its own for the same reason.
#[pyclass(module = "ferricorn", name = "ErrorStream", frozen)]
pub struct ErrorStream {
    stderr: Py<PyAny>,
}

#[pymethods]
impl ErrorStream {
    fn write(&self, py: Python<'_>, s: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Ok(self.stderr.bind(py).call_method1("write", (s,))?.unbind())
    }
    fn writelines(&self, py: Python<'_>, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        self.stderr.bind(py).call_method1("writelines", (lines,))?;
        Ok(())
    }
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.stderr.bind(py).call_method0("flush")?;
        Ok(())
    }
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.flush(py)
    }
    #[getter]
    fn closed(&self) -> bool {
        false
    }
    fn writable(&self) -> bool {
        true
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
/// return the object to use as `wsgi.errors`: journal entries, or else
/// the error log (`sys.stderr`).
pub fn install(py: Python<'_>) -> PyResult<Py<PyAny>> {
    if crate::log::journal().is_none() {
        let stderr = py.import("sys")?.getattr("stderr")?.unbind();
        return Ok(Bound::new(py, ErrorStream { stderr })?.into_any().unbind());
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
    Ok(errors.into_any().unbind())
}
