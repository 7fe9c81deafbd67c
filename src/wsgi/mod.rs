//! The embedded CPython: starting the interpreter in a worker (or in the
//! master with `--preload`), making the app's virtualenv importable, and
//! importing the WSGI callable.
//!
//! Everything Python-facing lives under this module; the worker's I/O loop
//! calls in here only with a complete request in hand, and only then takes
//! the GIL.

pub mod environ;
pub mod hooks;
pub mod input;
pub mod pylog;
pub mod response;

use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::config::Settings;

/// Python version this binary was built against, e.g. (3, 11).
pub fn linked_version() -> (u8, u8) {
    // SAFETY: Py_GetVersion returns a static string and may be called
    // before the interpreter is initialised.
    let v = unsafe { std::ffi::CStr::from_ptr(pyo3::ffi::Py_GetVersion()) }.to_string_lossy();
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(3);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// The `version = 3.11.2` line of a venv's pyvenv.cfg, as (major, minor).
fn venv_version(venv: &Path) -> Result<(u8, u8), String> {
    let cfg = venv.join("pyvenv.cfg");
    let text =
        std::fs::read_to_string(&cfg).map_err(|e| format!("cannot read {}: {e}", cfg.display()))?;
    for line in text.lines() {
        let (k, v) = match line.split_once('=') {
            Some(kv) => kv,
            None => continue,
        };
        let k = k.trim();
        if k == "version" || k == "version_info" {
            let mut parts = v.trim().split('.');
            let major = parts.next().and_then(|p| p.parse().ok());
            let minor = parts.next().and_then(|p| p.parse().ok());
            if let (Some(a), Some(b)) = (major, minor) {
                return Ok((a, b));
            }
        }
    }
    Err(format!("{} has no version line", cfg.display()))
}

/// Check the venv matches the linked Python and return its site-packages.
pub fn venv_site_packages(venv: &Path) -> Result<PathBuf, String> {
    let (lmaj, lmin) = linked_version();
    let (vmaj, vmin) = venv_version(venv)?;
    if (vmaj, vmin) != (lmaj, lmin) {
        return Err(format!(
            "virtualenv {} was made with Python {vmaj}.{vmin}, but ferricorn embeds Python {lmaj}.{lmin}; \
             recreate it with `python{lmaj}.{lmin} -m venv` (on Debian: /usr/bin/python3 -m venv)",
            venv.display()
        ));
    }
    Ok(venv.join(format!("lib/python{lmaj}.{lmin}/site-packages")))
}

/// A venv of the right version made by another installation of it (pyenv,
/// a /usr/local build): pyvenv.cfg's `home` is not the embedded Python's
/// bin directory. Imports mostly work, but a process started from the
/// venv's `python` (multiprocessing's spawn, `sys.executable`) runs that
/// other interpreter against our sys.path, and its compiled modules may
/// not match: say so once at boot rather than leave a hang to explain.
fn foreign_venv_warning(venv: &Path, base_prefix: &Path) -> Option<String> {
    let text = std::fs::read_to_string(venv.join("pyvenv.cfg")).ok()?;
    let home = text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == "home").then(|| PathBuf::from(v.trim()))
    })?;
    let ours = base_prefix.join("bin");
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(&home, &ours) {
        return None;
    }
    Some(format!(
        "virtualenv {} was made by the Python in {}, not the one ferricorn embeds ({}): \
         processes started from its python (multiprocessing's spawn) may fail; \
         recreate it with {}/python3 -m venv",
        venv.display(),
        home.display(),
        ours.display(),
        ours.display()
    ))
}

/// Process-level setup that must precede `Py_Initialize`: the app's
/// environment variables and working directory.
pub fn prepare_process(s: &Settings) -> Result<(), String> {
    for (k, v) in &s.env {
        // SAFETY: called while the process is single-threaded (in the
        // master before any thread exists, or in a freshly forked worker).
        unsafe { std::env::set_var(k, v) };
    }
    if let Some(d) = &s.chdir {
        std::env::set_current_dir(d).map_err(|e| format!("chdir {}: {e}", d.display()))?;
    }
    Ok(())
}

/// Put a virtualenv's site-packages on sys.path as `site` does (its .pth
/// files too): the app's imports, a Python config's and its hooks'.
pub fn add_site_dir(py: Python<'_>, site_packages: &Path) -> PyResult<()> {
    py.import("site")?
        .call_method1("addsitedir", (site_packages.display().to_string(),))?;
    Ok(())
}

/// Start CPython and make the app importable (cwd, --pythonpath, venv).
/// `first` says this process is the first to do so for the server (the
/// master with --preload, the first worker, --check-config): warnings
/// about the set-up are logged there only, not by every worker and every
/// respawn.
pub fn init_interpreter(s: &Settings, first: bool) -> Result<(), String> {
    let site_packages = match &s.virtualenv {
        Some(v) => Some(venv_site_packages(v)?),
        None => None,
    };
    Python::initialize();
    Python::attach(|py| -> PyResult<()> {
        let sys = py.import("sys")?;
        let path = sys.getattr("path")?.cast_into::<PyList>()?;
        let cwd = std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // Gunicorn puts the working directory first, so `app:app` imports
        // the app next to where the server was started (or --chdir).
        path.insert(0, &cwd)?;
        for (i, p) in s.pythonpath.iter().enumerate() {
            path.insert(i + 1, p.display().to_string())?;
        }
        if let (Some(sp), Some(venv)) = (&site_packages, &s.virtualenv) {
            let base: String = sys.getattr("base_prefix")?.extract()?;
            if let Some(warning) = foreign_venv_warning(venv, Path::new(&base)).filter(|_| first) {
                crate::log::warning(&warning);
            }
            add_site_dir(py, sp)?;
            sys.setattr("prefix", venv.display().to_string())?;
            sys.setattr("exec_prefix", venv.display().to_string())?;
        }
        sys.setattr("argv", vec!["ferricorn".to_string()])?;
        // sys.executable is what multiprocessing's spawn and `subprocess.run(
        // [sys.executable, ...])` start. Embedded, CPython guesses it from
        // PATH ("python3": whatever comes first, a pyenv shim, another
        // version). Say what Gunicorn's users get: the venv's python, else
        // the interpreter of the Python ferricorn embeds.
        if let Some(exe) = python_executable(&sys, s.virtualenv.as_deref())? {
            sys.setattr("executable", &exe)?;
            sys.setattr("_base_executable", &exe)?;
        }
        // A worker killed for a timeout gets SIGABRT first: faulthandler
        // then prints every thread's Python stack to stderr (the error log).
        py.import("faulthandler")?.call_method0("enable")?;
        Ok(())
    })
    .map_err(|e| Python::attach(|py| format_py_err(py, &e)))
}

/// The venv's `bin/python` when there is one, else `{base_prefix}/bin/python3.X`
/// (Debian's /usr/bin/python3.11 for ferricorn built against it); None if
/// neither exists, leaving CPython's guess.
fn python_executable(sys: &Bound<'_, PyModule>, venv: Option<&Path>) -> PyResult<Option<String>> {
    if let Some(v) = venv {
        for name in ["bin/python", "bin/python3"] {
            let p = v.join(name);
            if p.exists() {
                return Ok(Some(p.display().to_string()));
            }
        }
    }
    let base: String = sys.getattr("base_prefix")?.extract()?;
    let (major, minor) = linked_version();
    let p = Path::new(&base).join(format!("bin/python{major}.{minor}"));
    Ok(p.exists().then(|| p.display().to_string()))
}

pub fn format_py_err(py: Python<'_>, e: &PyErr) -> String {
    let r = (|| -> PyResult<String> {
        let lines = py.import("traceback")?.call_method1(
            "format_exception",
            (e.get_type(py), e.value(py), e.traceback(py)),
        )?;
        pyo3::types::PyString::new(py, "")
            .call_method1("join", (lines,))?
            .extract()
    })();
    r.unwrap_or_else(|_| e.to_string())
}

/// Why the app could not be loaded. Gunicorn tells the two apart by exit
/// status, and so do we: a module (or factory) that raised is a boot error
/// (3, with its traceback); a module that imported but has no such app
/// object, or one that is not callable, is Gunicorn's AppImportError (4,
/// with its one-line reason).
pub enum LoadError {
    Raised(PyErr),
    NotFound(String),
}

impl LoadError {
    pub fn exit_status(&self) -> i32 {
        match self {
            LoadError::Raised(_) => crate::config::EXIT_APP_LOAD_ERROR,
            LoadError::NotFound(_) => crate::config::EXIT_APP_NOT_FOUND,
        }
    }

    /// The traceback, or the reason.
    pub fn describe(&self, py: Python<'_>) -> String {
        match self {
            LoadError::Raised(e) => format_py_err(py, e),
            LoadError::NotFound(why) => why.clone(),
        }
    }
}

/// `--reload` after an import that raised, as Gunicorn's reloader does with
/// a SyntaxError: the worker stays up and answers every request with this
/// 500 (the traceback goes to the log, never to the client) until a file it
/// watches changes, so the fix is picked up at once.
const FAIL_APP: &std::ffi::CStr = c"
def fail_app(environ, start_response):
    body = b'Internal Server Error\\n'
    start_response('500 Internal Server Error',
                   [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])
    return [body]

def raised_in(exc):
    import os
    files = []
    if isinstance(exc, SyntaxError) and exc.filename:
        files.append(exc.filename)
    tb = exc.__traceback__
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return sorted({os.path.abspath(f) for f in files if os.path.isfile(f)})
";

/// The stand-in app for a failed import under `--reload`, and the files the
/// exception came from (the broken module is not in `sys.modules`, so the
/// reloader must be told to watch it).
pub fn fail_app(py: Python<'_>, raised: &PyErr) -> PyResult<(Py<PyAny>, Vec<String>)> {
    let globals = pyo3::types::PyDict::new(py);
    py.run(FAIL_APP, Some(&globals), None)?;
    let app = globals.get_item("fail_app")?.expect("defined above");
    let files = globals
        .get_item("raised_in")?
        .expect("defined above")
        .call1((raised.value(py),))?
        .extract()?;
    Ok((app.unbind(), files))
}

/// Import `module:callable` (or call `module:factory(...)`).
pub fn load_app(py: Python<'_>, spec: &str) -> Result<Py<PyAny>, LoadError> {
    let (module, obj) = spec.split_once(':').unwrap_or((spec, "application"));
    let m = py.import(module).map_err(LoadError::Raised)?;
    let not_found =
        || LoadError::NotFound(format!("Failed to find attribute {obj:?} in {module:?}."));
    let app = if let Some((factory, _)) = obj.split_once('(') {
        // A factory call: evaluated in the module's namespace, like
        // Gunicorn's `module:create_app(arg)` form; a factory that is not
        // there is not found, one that raises has raised.
        if !m.hasattr(factory.trim()).unwrap_or(false) {
            return Err(not_found());
        }
        let code = std::ffi::CString::new(obj)
            .map_err(|_| LoadError::NotFound(format!("NUL in the app spec {spec:?}")))?;
        let globals = m.dict();
        py.eval(&code, Some(&globals), None)
            .map_err(LoadError::Raised)?
    } else {
        let mut cur = m.into_any();
        for part in obj.split('.') {
            cur = cur.getattr(part).map_err(|_| not_found())?;
        }
        cur
    };
    if !app.is_callable() {
        return Err(LoadError::NotFound(format!(
            "Application object {spec:?} must be callable."
        )));
    }
    Ok(app.unbind())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn venv_with_home(name: &str, home: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ferricorn-venv-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("pyvenv.cfg"),
            format!("home = {home}\ninclude-system-site-packages = false\nversion = 3.11.2\n"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_venv_of_the_embedded_python_draws_no_warning() {
        let v = venv_with_home("same", "/usr/bin");
        assert_eq!(foreign_venv_warning(&v, Path::new("/usr")), None);
        // /bin is a symlink to /usr/bin on merged-/usr systems: compared
        // after resolving, as the same directory.
        if Path::new("/bin").canonicalize().ok() == Some(PathBuf::from("/usr/bin")) {
            let v = venv_with_home("merged", "/bin");
            assert_eq!(foreign_venv_warning(&v, Path::new("/usr")), None);
        }
    }

    #[test]
    fn a_venv_of_another_installation_is_named() {
        let v = venv_with_home("pyenv", "/root/.pyenv/versions/3.11.7/bin");
        let w = foreign_venv_warning(&v, Path::new("/usr")).expect("a warning");
        assert!(w.contains("/root/.pyenv/versions/3.11.7/bin"), "{w}");
        assert!(w.contains("/usr/bin/python3 -m venv"), "{w}");
    }
}
