//! Link settings that follow from how PyO3 links CPython.
//!
//! With the static libpython3.X.a (`tools/pyo3-config`, `shared=false` in the
//! file `PYO3_CONFIG_FILE` names), the binary is linked the way Debian links
//! /usr/bin/python3.X from that same archive:
//! - `-no-pie`: the archive's objects are not position-independent;
//! - `--export-dynamic`: C extension modules (the stdlib's lib-dynload, and
//!   wheels) are not linked to libpython; they find the C API among the
//!   executable's exported symbols, as they do in /usr/bin/python3.X.
//!
//! With the shared library (PyO3's default) there is nothing to add.

use std::env;
use std::fs;

fn main() {
    println!("cargo:rerun-if-env-changed=PYO3_CONFIG_FILE");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(path) = env::var_os("PYO3_CONFIG_FILE") else {
        return;
    };
    println!("cargo:rerun-if-changed={}", path.to_string_lossy());
    let Ok(text) = fs::read_to_string(&path) else {
        return; // PyO3's own build script reports an unreadable file
    };
    let shared = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("shared="))
        .map(|v| v.trim() != "false")
        .unwrap_or(true);
    if !shared {
        println!("cargo:rustc-link-arg=-no-pie");
        println!("cargo:rustc-link-arg=-Wl,--export-dynamic");
    }
}
