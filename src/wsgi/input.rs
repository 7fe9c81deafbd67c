//! `wsgi.input`: the request body, already read in full by the Rust I/O
//! loop before the app was called (so a slow uploader never holds a Python
//! thread). Small bodies sit in memory; bodies above `--body-buffer-size`
//! were spooled to an unlinked temp file, so a 200 MB upload costs the
//! worker a 64 KiB read buffer, not 200 MB.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A complete request body.
#[derive(Debug)]
pub enum Body {
    Mem(Vec<u8>),
    File { file: File, len: u64 },
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Mem(v) => v.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

/// Collects a body while it arrives, moving to a temp file past `limit`.
#[derive(Debug)]
pub struct BodySink {
    mem: Vec<u8>,
    file: Option<File>,
    len: u64,
    limit: usize,
}

impl BodySink {
    /// Bytes taken so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn new(limit: usize, expected: Option<u64>) -> BodySink {
        let cap = expected.map(|e| e.min(limit as u64) as usize).unwrap_or(0);
        BodySink {
            mem: Vec::with_capacity(cap),
            file: None,
            len: 0,
            limit,
        }
    }

    pub fn push(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.len += data.len() as u64;
        if let Some(f) = &mut self.file {
            return f.write_all(data);
        }
        if self.mem.len() + data.len() > self.limit {
            let mut f = spool_file()?;
            f.write_all(&self.mem)?;
            f.write_all(data)?;
            self.mem = Vec::new();
            self.file = Some(f);
            return Ok(());
        }
        self.mem.extend_from_slice(data);
        Ok(())
    }

    /// The in-memory buffer with room for `max` more bytes, lent out so
    /// the socket can be read straight into it; None once the body is
    /// spooled or would outgrow `--body-buffer-size`. Give it back with
    /// `put_back`.
    pub fn lend(&mut self, max: u64) -> Option<Vec<u8>> {
        if self.file.is_some() || self.mem.len() as u64 + max > self.limit as u64 {
            return None;
        }
        self.mem.reserve(max as usize);
        Some(std::mem::take(&mut self.mem))
    }

    /// The buffer `lend` gave, now `got` bytes longer.
    pub fn put_back(&mut self, mem: Vec<u8>, got: usize) {
        self.mem = mem;
        self.len += got as u64;
    }

    /// The body is complete: hand it over, rewound, for `wsgi.input`.
    pub fn finish(self) -> std::io::Result<Body> {
        match self.file {
            Some(mut f) => {
                f.flush()?;
                f.seek(SeekFrom::Start(0))?;
                Ok(Body::File {
                    file: f,
                    len: self.len,
                })
            }
            None => Ok(Body::Mem(self.mem)),
        }
    }
}

/// An anonymous temp file in `$TMPDIR` (default /tmp): O_TMPFILE where the
/// filesystem supports it, otherwise create-and-unlink. Either way nothing
/// is left on disk. Where that directory cannot be written (a read-only
/// root in a container), a memfd: the body then costs memory, as in
/// Gunicorn's `--worker-tmp-dir /dev/shm` set-ups, instead of a 500.
fn spool_file() -> std::io::Result<File> {
    let dir = std::env::temp_dir();
    match temp_file_in(&dir) {
        Ok(f) => Ok(f),
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                crate::log::warning(&format!(
                    "cannot spool request bodies over --body-buffer-size to {} ({e}); \
                     keeping them in memory instead (set TMPDIR to a writable directory)",
                    dir.display()
                ))
            });
            let fd = nix::sys::memfd::memfd_create(
                c"ferricorn-body",
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
            )?;
            Ok(File::from(fd))
        }
    }
}

fn temp_file_in(dir: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .mode(0o600)
        .open(dir)
    {
        Ok(f) => Ok(f),
        Err(_) => {
            let path = dir.join(format!(
                "ferricorn-body-{}-{}",
                std::process::id(),
                crate::scoreboard::now_ms()
            ));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            let _ = std::fs::remove_file(&path);
            Ok(f)
        }
    }
}

struct State {
    body: Body,
    pos: u64,
}

impl State {
    /// Drop the body (closing a spool file); it reads as empty afterwards.
    fn release(&mut self) {
        self.body = Body::Mem(Vec::new());
        self.pos = 0;
    }

    fn remaining(&self) -> u64 {
        self.body.len() - self.pos
    }

    /// Fill `out` from the current position (the caller sized it to at
    /// most `remaining()`), and move past it.
    fn fill(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        let n = out.len();
        match &self.body {
            Body::Mem(v) => out.copy_from_slice(&v[self.pos as usize..self.pos as usize + n]),
            Body::File { file, .. } => file.read_exact_at(out, self.pos)?,
        }
        self.pos += n as u64;
        Ok(())
    }

    /// Read through the next b'\n' (inclusive), at most `limit` bytes.
    fn line(&mut self, limit: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
        let limit = limit.min(self.remaining());
        match &self.body {
            Body::Mem(v) => {
                let s = &v[self.pos as usize..(self.pos + limit) as usize];
                let n = s
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(s.len());
                out.extend_from_slice(&s[..n]);
                self.pos += n as u64;
            }
            Body::File { file, .. } => {
                let mut buf = [0u8; 8192];
                let mut left = limit;
                while left > 0 {
                    let want = (left as usize).min(buf.len());
                    let got = file.read_at(&mut buf[..want], self.pos)?;
                    if got == 0 {
                        break;
                    }
                    let n = buf[..got].iter().position(|&b| b == b'\n').map(|i| i + 1);
                    let used = n.unwrap_or(got);
                    out.extend_from_slice(&buf[..used]);
                    self.pos += used as u64;
                    left -= used as u64;
                    if n.is_some() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

#[pyclass(module = "ferricorn", name = "Input", frozen)]
pub struct Input {
    state: Arc<Mutex<State>>,
}

impl Input {
    /// The `wsgi.input` object, and the handle that frees its body when
    /// the worker is done with the request.
    pub fn new(body: Body) -> (Input, BodyRelease) {
        let state = Arc::new(Mutex::new(State { body, pos: 0 }));
        (
            Input {
                state: state.clone(),
            },
            BodyRelease(state),
        )
    }
}

/// Held by the worker for the life of a response; dropping it frees the
/// request body (closes a spool file) even if the app kept `wsgi.input`
/// alive, in a reference cycle the collector has not reached yet (Django
/// and Flask requests are such cycles). Until then a spooled body would
/// keep its deleted temp file, and its disk space, per request.
pub struct BodyRelease(Arc<Mutex<State>>);

impl Drop for BodyRelease {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).release();
    }
}

fn size_arg(size: Option<i64>) -> u64 {
    match size {
        Some(n) if n >= 0 => n as u64,
        _ => u64::MAX,
    }
}

#[pymethods]
impl Input {
    /// read(size=-1): up to `size` bytes; all the rest when negative/None.
    #[pyo3(signature = (size = None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        // Copied once, from the body straight into the new bytes object.
        let mut s = self.state.lock().unwrap();
        let n = size_arg(size).min(s.remaining()) as usize;
        PyBytes::new_with(py, n, |buf| s.fill(buf).map_err(PyErr::from))
    }

    #[pyo3(signature = (size = None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::new();
        self.state.lock().unwrap().line(size_arg(size), &mut out)?;
        Ok(PyBytes::new(py, &out))
    }

    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(
        &self,
        py: Python<'py>,
        hint: Option<i64>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        // io's rule: a hint of 0 or less is no hint (all the lines).
        let hint = match hint {
            Some(h) if h > 0 => h as u64,
            _ => u64::MAX,
        };
        let mut lines = Vec::new();
        let mut total = 0u64;
        let mut s = self.state.lock().unwrap();
        while s.remaining() > 0 {
            let mut out = Vec::new();
            s.line(u64::MAX, &mut out)?;
            total += out.len() as u64;
            lines.push(PyBytes::new(py, &out));
            if total >= hint {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::new();
        self.state.lock().unwrap().line(u64::MAX, &mut out)?;
        if out.is_empty() {
            return Err(PyStopIteration::new_err(()));
        }
        Ok(PyBytes::new(py, &out))
    }

    fn readable(&self) -> bool {
        true
    }

    /// Frees the body now (it reads as empty afterwards).
    fn close(&self) {
        self.state.lock().unwrap().release();
    }
}
