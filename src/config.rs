//! One `Settings` struct for the whole server, built from (highest first)
//! the command line, a TOML config file (`-c FILE`), a few environment
//! variables Gunicorn users expect (`WEB_CONCURRENCY`, `VIRTUAL_ENV`), and
//! defaults — the same names and defaults as Gunicorn's settings.
//!
//! Why one struct: the master, the workers and the WSGI layer all read the
//! same values, and a reload (HUP) re-reads them in one place. Every check
//! lives here, so a bad value is refused before anything is bound or forked,
//! with a message naming the key and the reason.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::http::Limits;

/// Exit status when the configuration is invalid (documented in README and
/// `docs/SIGNALS.md`; units use it in `RestartPreventExitStatus=`).
pub const EXIT_CONFIG_ERROR: i32 = 2;
/// Exit status when importing the application raised (Gunicorn's
/// WORKER_BOOT_ERROR). systemd units list it in `RestartPreventExitStatus=`.
pub const EXIT_APP_LOAD_ERROR: i32 = 3;
/// Exit status when the module imported but the application object is not
/// in it or not callable (Gunicorn's APP_LOAD_ERROR). Also in the units'
/// `RestartPreventExitStatus=`.
pub const EXIT_APP_NOT_FOUND: i32 = 4;

/// Whether a worker's exit status says the app could not be loaded.
pub fn is_app_load_failure(status: i32) -> bool {
    status == EXIT_APP_LOAD_ERROR || status == EXIT_APP_NOT_FOUND
}

pub const DEFAULT_ACCESS_LOG_FORMAT: &str =
    r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

#[derive(Parser, Debug)]
#[command(
    name = "ferricorn",
    version,
    about = "A pre-fork Python WSGI server in Rust, systemd-native, Gunicorn-compatible",
    long_about = "ferricorn serves a WSGI application (MODULE:CALLABLE) with a Rust master \
process and pre-forked worker processes that embed CPython.\n\nExit status: 0 after a clean \
stop, 1 on a runtime error, 2 for a configuration or usage error, 3 when importing the \
application raised, 4 when the application object is not found in its module (as Gunicorn).",
    args_conflicts_with_subcommands = true,
    args_override_self = true,
    // `-w -1` is a bad value for --workers (named in the error), not an
    // unknown flag.
    allow_negative_numbers = true,
    // Gunicorn's argparse takes an unambiguous prefix of a long option
    // (`--grace 5`): command lines written for it start unchanged.
    infer_long_args = true,
    after_help = "FERRICORN_CMD_ARGS in the environment adds arguments (as Gunicorn's \
GUNICORN_CMD_ARGS, which is read where FERRICORN_CMD_ARGS is not set); those on the command \
line win."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub opts: Options,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the man page (roff) or a shell completion script to stdout, or
    /// write the man pages of ferricorn and its subcommands into DIR.
    Generate {
        /// man, bash, zsh, fish, or man-pages (with DIR)
        what: String,
        /// Where man-pages writes ferricorn.1 and ferricorn-SUBCOMMAND.1.
        dir: Option<PathBuf>,
    },
    /// Write a systemd socket+service pair named NAME for one app.
    SystemdUnits(UnitArgs),
}

#[derive(Args, Debug, Clone)]
pub struct UnitArgs {
    /// Unit name: writes NAME.socket and NAME.service.
    pub name: String,
    /// Config file the service runs with (made absolute).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// What the socket listens on (ListenStream=): HOST:PORT, PORT, or a unix path. Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// User the service runs as.
    #[arg(long, default_value = "_ferricorn")]
    pub user: String,
    /// Group the service runs as [default: the user]
    #[arg(long)]
    pub group: Option<String>,
    /// Directory to write the units into; '-' prints them.
    #[arg(
        long = "output-dir",
        value_name = "DIR",
        default_value = "/etc/systemd/system"
    )]
    pub output_dir: PathBuf,
    /// Overwrite existing unit files.
    #[arg(long)]
    pub force: bool,
    /// The systemd the units are for [default: `systemctl --version`, else 252].
    /// From 253 on the service uses Type=notify-reload; before, Type=notify
    /// with ExecReload=kill -HUP.
    #[arg(long = "systemd-version", value_name = "N")]
    pub systemd_version: Option<u32>,
}

/// Every server option. All are `Option` so that "not given" can fall back
/// to the config file, then the default.
#[derive(Args, Debug, Default, Clone)]
pub struct Options {
    /// The WSGI application: MODULE:CALLABLE or MODULE:FACTORY() (default callable: application).
    #[arg(value_name = "APP_MODULE")]
    pub wsgi_app: Option<String>,
    /// Config file: TOML with Gunicorn's setting names as keys (bind, workers, ...), or a
    /// Gunicorn Python config (FILE.py, file:FILE.py or python:MODULE; its server hooks run).
    /// Without it, ./gunicorn.conf.py is read if it exists, as Gunicorn does.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Socket to bind: HOST:PORT, [V6]:PORT, unix:PATH, fd://N or fd://NAME. Repeatable.
    #[arg(short = 'b', long = "bind", value_name = "ADDRESS")]
    pub bind: Vec<String>,
    /// Number of worker processes [env: WEB_CONCURRENCY] [default: 1]
    #[arg(short = 'w', long)]
    pub workers: Option<usize>,
    /// Threads per worker that run application calls [default: 1]
    #[arg(long)]
    pub threads: Option<usize>,
    /// Maximum simultaneous clients per worker [default: 1000]
    #[arg(long = "worker-connections")]
    pub worker_connections: Option<usize>,
    /// listen(2) backlog [default: 2048]
    #[arg(long)]
    pub backlog: Option<i32>,
    /// Seconds to wait for the next request on a keep-alive connection [default: 2]
    #[arg(long = "keep-alive")]
    pub keepalive: Option<u64>,
    /// Workers silent for more than this many seconds are killed; 0 disables [default: 30]
    #[arg(short = 't', long)]
    pub timeout: Option<u64>,
    /// Seconds in-flight requests get to finish on a graceful stop or reload [default: 30]
    #[arg(long = "graceful-timeout")]
    pub graceful_timeout: Option<u64>,
    /// Recycle a worker after this many requests; 0 disables [default: 0]
    #[arg(long = "max-requests")]
    pub max_requests: Option<u64>,
    /// Random extra requests (0..=J) added to --max-requests per worker [default: 0]
    #[arg(long = "max-requests-jitter")]
    pub max_requests_jitter: Option<u64>,
    /// Change to this directory before loading the app.
    #[arg(long)]
    pub chdir: Option<PathBuf>,
    /// Comma-separated directories to add to the Python path.
    #[arg(long)]
    pub pythonpath: Option<String>,
    /// Set an environment variable for the app: KEY=VALUE. Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The app's virtualenv (made with the Python ferricorn links) [env: VIRTUAL_ENV]
    #[arg(long)]
    pub virtualenv: Option<PathBuf>,
    /// SCRIPT_NAME for the app (the prefix a proxy mounts it at) [env: SCRIPT_NAME]
    #[arg(long = "root-path")]
    pub root_path: Option<String>,
    /// Maximum size of the request line in bytes; 0 = unlimited [default: 4094]
    #[arg(long = "limit-request-line")]
    pub limit_request_line: Option<usize>,
    /// Maximum number of header fields [default: 100]
    #[arg(long = "limit-request-fields")]
    pub limit_request_fields: Option<usize>,
    /// Maximum size of one header field line in bytes, its CRLF included (as
    /// Gunicorn counts); 0 = unlimited [default: 8190]
    #[arg(long = "limit-request-field_size", alias = "limit-request-field-size")]
    pub limit_request_field_size: Option<usize>,
    /// Accept methods Gunicorn calls unconventional: shorter than 3 or
    /// longer than 20 characters, or with lowercase letters or `#` (400 otherwise).
    #[arg(long = "permit-unconventional-http-method")]
    pub permit_unconventional_http_method: bool,
    /// Upper-case the request method before the app sees it.
    #[arg(long = "casefold-http-method")]
    pub casefold_http_method: bool,
    /// Addresses or networks (10.0.0.0/8) trusted to set X-Forwarded-Proto & co; '*' trusts all [default: 127.0.0.1,::1]
    #[arg(long = "forwarded-allow-ips")]
    pub forwarded_allow_ips: Option<String>,
    /// Accept a PROXY protocol header before a connection's first request: v1, v2, auto (either;
    /// the flag alone means auto) or off [default: off]
    #[arg(
        long = "proxy-protocol",
        value_name = "MODE",
        num_args = 0..=1,
        default_missing_value = "auto"
    )]
    pub proxy_protocol: Option<String>,
    /// Addresses or networks allowed to send a PROXY header; '*' allows all [default: 127.0.0.1,::1]
    #[arg(long = "proxy-allow-from")]
    pub proxy_allow_ips: Option<String>,
    /// Error log file; '-' is stderr [default: -]
    #[arg(long = "error-logfile", alias = "log-file")]
    pub errorlog: Option<String>,
    /// debug, info, warning, error, critical [default: info]
    #[arg(long = "log-level")]
    pub loglevel: Option<String>,
    /// Access log file; '-' is stdout. Off unless set (as in Gunicorn).
    #[arg(long = "access-logfile")]
    pub accesslog: Option<String>,
    /// Access log format with Gunicorn's atoms (%(h)s, %(r)s, %(s)s, ...)
    #[arg(long = "access-logformat")]
    pub access_log_format: Option<String>,
    /// Where log records go: auto (journald when stderr is the journal), stderr, journald [default: auto]
    #[arg(long = "log-target")]
    pub log_target: Option<String>,
    /// Import the app in the master before forking workers.
    #[arg(long)]
    pub preload: bool,
    /// Send the processes' stdout (print() in the app) to the error log file too.
    #[arg(long = "capture-output")]
    pub capture_output: bool,
    /// Set SO_REUSEPORT on the TCP sockets ferricorn binds itself.
    #[arg(long = "reuse-port")]
    pub reuse_port: bool,
    /// Check the configuration and that the app imports, then exit: 0 if
    /// both are fine, 1 if not (as Gunicorn).
    #[arg(long = "check-config")]
    pub check_config: bool,
    /// Print the resolved settings as a config file would set them, then
    /// check them as --check-config does.
    #[arg(long = "print-config")]
    pub print_config: bool,
    /// Restart workers when Python source files change (development only).
    #[arg(long)]
    pub reload: bool,
    /// With --reload, also watch these files (templates, configs); glob patterns (*, ?, [..],
    /// ** recursive) are expanded when a worker starts, relative to where ferricorn started. Repeatable
    #[arg(long = "reload-extra-file", value_name = "FILE")]
    pub reload_extra_files: Vec<String>,
    /// Switch worker processes to this user after binding.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Switch worker processes to this group after binding.
    #[arg(short = 'g', long)]
    pub group: Option<String>,
    /// With --user, give workers all the user's supplementary groups
    /// (initgroups(3)); without it they have none.
    #[arg(long)]
    pub initgroups: bool,
    /// umask for the unix socket files the server binds (in force only while binding, as Gunicorn's; the processes keep the umask they inherit): 0027 or 0o027 (octal), 0x17, 23 (decimal) [default: 0]
    #[arg(short = 'm', long)]
    pub umask: Option<String>,
    /// Write the master's PID to this file.
    #[arg(short = 'p', long = "pid")]
    pub pidfile: Option<PathBuf>,
    /// Process name shown in ps: "ferricorn: master [NAME]".
    #[arg(short = 'n', long = "name")]
    pub proc_name: Option<String>,
    /// Request bodies larger than this many bytes are spooled to a temp file [default: 1048576]
    #[arg(long = "body-buffer-size")]
    pub body_buffer_size: Option<usize>,
    /// Largest request body accepted, in bytes; larger ones get 413 before
    /// they are read; 0 = no limit [default: 0]
    #[arg(long = "limit-request-body")]
    pub limit_request_body: Option<u64>,
}

/// The TOML file: the same keys as the long options, in snake_case.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileOptions {
    /// Set by a Python config that defines server hooks (not a TOML key).
    #[serde(skip)]
    hooks: Option<crate::pyconfig::Hooks>,
    wsgi_app: Option<String>,
    bind: Option<OneOrMany>,
    workers: Option<usize>,
    threads: Option<usize>,
    worker_connections: Option<usize>,
    backlog: Option<i32>,
    keepalive: Option<u64>,
    timeout: Option<u64>,
    graceful_timeout: Option<u64>,
    max_requests: Option<u64>,
    max_requests_jitter: Option<u64>,
    chdir: Option<PathBuf>,
    pythonpath: Option<String>,
    raw_env: Option<OneOrMany>,
    env: Option<BTreeMap<String, String>>,
    virtualenv: Option<PathBuf>,
    root_path: Option<String>,
    limit_request_line: Option<usize>,
    limit_request_fields: Option<usize>,
    limit_request_field_size: Option<usize>,
    permit_unconventional_http_method: Option<bool>,
    casefold_http_method: Option<bool>,
    forwarded_allow_ips: Option<OneOrMany>,
    secure_scheme_headers: Option<BTreeMap<String, String>>,
    proxy_protocol: Option<Switch>,
    proxy_allow_ips: Option<OneOrMany>,
    errorlog: Option<String>,
    loglevel: Option<String>,
    accesslog: Option<String>,
    access_log_format: Option<String>,
    log_target: Option<String>,
    preload_app: Option<bool>,
    preload: Option<bool>,
    reuse_port: Option<bool>,
    initgroups: Option<bool>,
    capture_output: Option<bool>,
    reload: Option<bool>,
    reload_extra_files: Option<OneOrMany>,
    user: Option<NameOrId>,
    group: Option<NameOrId>,
    umask: Option<TomlUmask>,
    pidfile: Option<PathBuf>,
    proc_name: Option<String>,
    body_buffer_size: Option<usize>,
    limit_request_body: Option<u64>,
}

/// `--proxy-protocol` takes an optional value, so `--proxy-protocol
/// app:app` would take the app for its value (argparse does that to
/// Gunicorn). Only a mode word is its value: anything else after it is
/// left alone, and the flag alone means `auto`.
pub fn pin_optional_values(argv: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(argv.len());
    let mut it = argv.into_iter().peekable();
    while let Some(a) = it.next() {
        if a == "--" {
            out.push(a);
            out.extend(it);
            break;
        }
        if a == "--proxy-protocol" {
            let next_is_mode = it
                .peek()
                .and_then(|n| n.to_str())
                .is_some_and(|n| ProxyProtocol::parse(n).is_some());
            if !next_is_mode {
                out.push(OsString::from("--proxy-protocol=auto"));
                continue;
            }
        }
        out.push(a);
    }
    out
}

/// A setting Gunicorn once took as a boolean and now as a word
/// (`proxy_protocol = true` or `"v2"`).
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Switch {
    Bool(bool),
    Word(String),
}

impl Switch {
    fn into_word(self) -> String {
        match self {
            Switch::Bool(b) => b.to_string(),
            Switch::Word(w) => w,
        }
    }
}

/// `proxy_protocol`: which versions of the PROXY header a connection may
/// start with (Gunicorn's values since 24.1; `true` is `auto`, `false` off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
    Auto,
}

impl ProxyProtocol {
    fn parse(word: &str) -> Option<ProxyProtocol> {
        Some(match word.trim().to_ascii_lowercase().as_str() {
            "off" | "false" => ProxyProtocol::Off,
            "v1" => ProxyProtocol::V1,
            "v2" => ProxyProtocol::V2,
            "auto" | "true" => ProxyProtocol::Auto,
            _ => return None,
        })
    }

    pub fn on(self) -> bool {
        self != ProxyProtocol::Off
    }

    pub fn accepts_v1(self) -> bool {
        matches!(self, ProxyProtocol::V1 | ProxyProtocol::Auto)
    }

    pub fn accepts_v2(self) -> bool {
        matches!(self, ProxyProtocol::V2 | ProxyProtocol::Auto)
    }

    fn name(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
            ProxyProtocol::Auto => "auto",
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}
impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `user`/`group` in a config file: a name or, as Gunicorn documents
/// ("a valid user id (as an integer) or the name of a user"), a number.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum NameOrId {
    Id(u32),
    Name(String),
}
impl NameOrId {
    fn into_string(self) -> String {
        match self {
            NameOrId::Id(i) => i.to_string(),
            NameOrId::Name(s) => s,
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum TomlUmask {
    Int(u32),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warning => "WARNING",
            LogLevel::Error => "ERROR",
            LogLevel::Critical => "CRITICAL",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Auto,
    Stderr,
    Journald,
}

/// Who may vouch for a client (forwarded_allow_ips, proxy_allow_ips):
/// `*`, or addresses and networks (`10.0.0.0/8`, as Gunicorn 22+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowIps {
    Any,
    List(Vec<IpNet>),
}

/// An address with a prefix length (32 or 128 for a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    fn parse(s: &str) -> Option<IpNet> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
        };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    fn contains(&self, ip: &std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let (net, ip, bits) = match (self.addr, ip) {
            (V4(n), V4(i)) => (u32::from(n) as u128, u32::from(*i) as u128, 32),
            (V6(n), V6(i)) => (u128::from(n), u128::from(*i), 128),
            _ => return false,
        };
        let host_bits = bits - self.prefix as u32;
        host_bits >= bits || (net ^ ip) >> host_bits == 0
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl AllowIps {
    /// `["*"]` or a list of addresses/networks; `key` names the setting in
    /// errors.
    fn parse(key: &str, entries: &[String]) -> Result<AllowIps, ConfigError> {
        if entries.iter().any(|a| a == "*") {
            return Ok(AllowIps::Any);
        }
        let mut nets = Vec::new();
        for a in entries.iter().filter(|a| !a.is_empty()) {
            nets.push(IpNet::parse(a).ok_or_else(|| {
                err(
                    key,
                    format!("{a:?} is not an IP address, a network (10.0.0.0/8) or '*'"),
                )
            })?);
        }
        Ok(AllowIps::List(nets))
    }

    /// As a TOML list, for --print-config.
    fn describe(&self) -> String {
        let items: Vec<String> = match self {
            AllowIps::Any => vec!["*".to_string()],
            AllowIps::List(l) => l.iter().map(|n| n.to_string()).collect(),
        };
        let quoted: Vec<String> = items
            .into_iter()
            .map(|s| toml::Value::String(s).to_string())
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    pub fn allows(&self, ip: &std::net::IpAddr) -> bool {
        match self {
            AllowIps::Any => true,
            AllowIps::List(l) => {
                // An IPv4 client seen on a dual-stack socket arrives as
                // ::ffff:a.b.c.d; compare it as the IPv4 address it is.
                let canon = match ip {
                    std::net::IpAddr::V6(v6) => {
                        v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(*ip)
                    }
                    _ => *ip,
                };
                l.iter().any(|n| n.contains(&canon))
            }
        }
    }
}

/// The validated settings every part of the server reads.
/// Gunicorn's default secure_scheme_headers (sorted, as a config file's
/// table is read, so --print-config shows one order).
pub const DEFAULT_SECURE_SCHEME_HEADERS: &[(&str, &str)] = &[
    ("X-FORWARDED-PROTO", "https"),
    ("X-FORWARDED-PROTOCOL", "ssl"),
    ("X-FORWARDED-SSL", "on"),
];

#[derive(Debug, Clone)]
pub struct Settings {
    pub wsgi_app: String,
    pub bind: Vec<String>,
    /// True when no `bind` was given anywhere (so socket activation, if
    /// present, supplies every socket; otherwise 127.0.0.1:8000).
    pub bind_is_default: bool,
    pub workers: usize,
    pub threads: usize,
    pub worker_connections: usize,
    pub backlog: i32,
    pub keepalive: u64,
    pub timeout: u64,
    pub graceful_timeout: u64,
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    pub chdir: Option<PathBuf>,
    pub pythonpath: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
    pub virtualenv: Option<PathBuf>,
    pub root_path: String,
    pub limits: Limits,
    pub forwarded_allow_ips: AllowIps,
    /// Gunicorn's secure_scheme_headers: (header name, value meaning https),
    /// believed from a forwarded_allow_ips peer only.
    pub secure_scheme_headers: Vec<(String, String)>,
    pub proxy_protocol: ProxyProtocol,
    pub proxy_allow_ips: AllowIps,
    pub errorlog: String,
    pub loglevel: LogLevel,
    pub accesslog: Option<String>,
    pub access_log_format: String,
    pub log_target: LogTarget,
    pub preload: bool,
    pub reuse_port: bool,
    /// Workers get the user's supplementary groups (Gunicorn's initgroups).
    pub initgroups: bool,
    /// stdout goes to the error log file as well (only with a file).
    pub capture_output: bool,
    pub reload: bool,
    /// Absolute paths or glob patterns (made absolute against the directory
    /// ferricorn started in, as Gunicorn's are relative to it, not to chdir).
    pub reload_extra_files: Vec<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub umask: u32,
    pub pidfile: Option<PathBuf>,
    pub proc_name: String,
    pub body_buffer_size: usize,
    /// 0: no limit.
    pub limit_request_body: u64,
    /// Server hooks of a Python config (src/wsgi/hooks.rs).
    pub hooks: Option<crate::pyconfig::Hooks>,
}

/// A configuration error: which key, and why.
#[derive(Debug)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting `{}`: {}", self.key, self.reason)
    }
}
impl std::error::Error for ConfigError {}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// `VIRTUAL_ENV`, honoured (when not empty) where --virtualenv is not given.
fn virtualenv_from_env(getenv: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    getenv("VIRTUAL_ENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The config file Gunicorn reads from the working directory when no -c is given.
const DEFAULT_PY_CONFIG: &str = "gunicorn.conf.py";

/// `venv`: the virtualenv a Python config may import from (the command
/// line's, else VIRTUAL_ENV's), as Gunicorn runs its config in its venv.
fn load_file(path: &Path, venv: Option<&Path>) -> Result<FileOptions, ConfigError> {
    // Gunicorn's forms: PATH, file:PATH, python:MODULE_NAME
    let spec = path.to_string_lossy();
    if let Some(module) = spec.strip_prefix("python:") {
        return load_python(
            &crate::pyconfig::Source::Module(module.to_string()),
            path,
            venv,
        );
    }
    let path = spec.strip_prefix("file:").map_or(path, Path::new);
    if path.extension().is_some_and(|x| x == "py") {
        if !path.is_file() {
            return Err(err(
                "config",
                format!("cannot read {}: no such file", path.display()),
            ));
        }
        return load_python(
            &crate::pyconfig::Source::File(path.to_path_buf()),
            path,
            venv,
        );
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| err("config", format!("cannot read {}: {e}", path.display())))?;
    match without_gunicorn_only(path, &text)? {
        // their lines are gone, so errors cannot point at a line of the file
        Some(rest) => toml::from_str(&rest).map_err(|e| file_error(path, &rest, &e, false)),
        None => toml::from_str(&text).map_err(|e| file_error(path, &text, &e, true)),
    }
}

/// A TOML config may set Gunicorn's settings that ferricorn lacks, as a
/// Python config may (src/gunicorn_only.rs). If it does: warn or refuse,
/// and the text without them.
fn without_gunicorn_only(path: &Path, text: &str) -> Result<Option<String>, ConfigError> {
    // A file that does not parse gets its error from the typed parse.
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return Ok(None);
    };
    let given: Vec<(String, String)> = table
        .iter()
        .filter(|(k, _)| crate::gunicorn_only::find(k).is_some())
        .map(|(k, v)| {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect();
    if given.is_empty() {
        return Ok(None);
    }
    judge_gunicorn_only(path, &given)?;
    for (k, _) in &given {
        table.remove(k);
    }
    Ok(Some(table.to_string()))
}

/// Gunicorn-only settings a config file set, by name and value: warn about
/// them, or refuse the first that cannot be ignored (src/gunicorn_only.rs).
fn judge_gunicorn_only(path: &Path, given: &[(String, String)]) -> Result<(), ConfigError> {
    let lead = format!(
        "{}: ignoring Gunicorn settings and hooks ferricorn does not have",
        path.display()
    );
    let given = given.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    crate::gunicorn_only::warn_or_refuse(given, &lead)
        .map_err(|(name, why)| err(&name, format!("{}: {why}", path.display())))
}

/// A Gunicorn-style `gunicorn.conf.py` or `python:MODULE` (src/pyconfig.rs):
/// run, then its settings checked as TOML. Errors name the key, without the
/// line of the generated text.
fn load_python(
    source: &crate::pyconfig::Source,
    path: &Path,
    venv: Option<&Path>,
) -> Result<FileOptions, ConfigError> {
    // not a venv, or another Python's: the app's own check reports it later
    let site_packages = venv.and_then(|v| crate::wsgi::venv_site_packages(v).ok());
    let ev = crate::pyconfig::evaluate(source, site_packages.as_deref())
        .map_err(|e| err("config", format!("{} failed:\n{e}", path.display())))?;
    judge_gunicorn_only(path, &ev.gunicorn_only)?;
    let names = ev
        .hooks
        .map_err(|(name, why)| err(&name, format!("{}: {why}", path.display())))?;
    let mut file: FileOptions =
        toml::from_str(&ev.toml).map_err(|e| file_error(path, &ev.toml, &e, false))?;
    if !names.is_empty() {
        let location = match source {
            crate::pyconfig::Source::File(p) => start_dir().join(p).display().to_string(),
            crate::pyconfig::Source::Module(m) => format!("python:{m}"),
        };
        file.hooks = Some(crate::pyconfig::Hooks { location, names });
    }
    Ok(file)
}

/// serde's reason in the words of the settings page: its Rust type names
/// (`usize`, `u64`, an untagged enum) mean nothing to an operator.
fn plain_reason(msg: &str) -> String {
    let msg = msg.trim_end();
    if msg.contains("untagged enum OneOrMany") {
        return "expected a string or a list of strings".to_string();
    }
    let mut out = msg.to_string();
    for (rust, plain) in [
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ] {
        if let Some(head) = out.strip_suffix(rust) {
            out = format!("{head}{plain}");
        }
    }
    out
}

/// A TOML error as a ConfigError that names the setting: the key on the
/// line the error points at (`workers = "two"`), else `config` with
/// toml's whole report (a syntax error: the line and a caret).
fn file_error(path: &Path, text: &str, e: &toml::de::Error, show_line: bool) -> ConfigError {
    let located = e.span().and_then(|span| {
        let start = text[..span.start.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line_no = text[..start].matches('\n').count() + 1;
        let line = text[start..].lines().next().unwrap_or("");
        let key = line.split_once('=')?.0.trim();
        let bare = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        bare.then(|| (key.to_string(), line_no))
    });
    match located {
        Some((key, line_no)) if show_line => err(
            &key,
            format!(
                "{} line {line_no}: {}",
                path.display(),
                plain_reason(e.message())
            ),
        ),
        Some((key, _)) => err(
            &key,
            format!("{}: {}", path.display(), plain_reason(e.message())),
        ),
        None => err(
            "config",
            format!("{}: {}", path.display(), e.to_string().trim_end()),
        ),
    }
}

impl Settings {
    /// Merge CLI > config file > environment > defaults, and validate.
    pub fn load(cli: &Options) -> Result<Settings, ConfigError> {
        start_dir(); // remembered before anything changes directory
        let getenv = |k: &str| std::env::var(k).ok();
        // the file's own `virtualenv` cannot serve: it is not read yet
        let venv = cli
            .virtualenv
            .clone()
            .or_else(|| virtualenv_from_env(&getenv))
            .map(|v| start_dir().join(v));
        // The master works in --chdir once the settings are read (as
        // Gunicorn's), so a HUP finds a relative -c where the start did.
        let file = match &cli.config {
            Some(p) => load_file(&from_start_dir_spec(p), venv.as_deref())?,
            // As Gunicorn: without -c, ./gunicorn.conf.py (where the server
            // is started, before --chdir) is read when it exists.
            None if start_dir().join(DEFAULT_PY_CONFIG).is_file() => {
                crate::log::info(&format!(
                    "Reading {DEFAULT_PY_CONFIG} from {} (Gunicorn's default config file; -c picks another)",
                    start_dir().display()
                ));
                load_file(&start_dir().join(DEFAULT_PY_CONFIG), venv.as_deref())?
            }
            None => FileOptions::default(),
        };
        Self::merge(cli, file, &getenv)
    }

    fn merge(
        cli: &Options,
        file: FileOptions,
        getenv: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let wsgi_app = cli.wsgi_app.clone().or(file.wsgi_app).ok_or_else(|| {
            err(
                "wsgi_app",
                "no application given (e.g. `ferricorn myapp:app`)",
            )
        })?;
        validate_app_spec(&wsgi_app)?;

        let mut bind = cli.bind.clone();
        if bind.is_empty() {
            bind = file.bind.map(OneOrMany::into_vec).unwrap_or_default();
        }
        let bind_is_default = bind.is_empty();
        if bind_is_default {
            if let Some(port) = getenv("PORT").filter(|p| !p.is_empty()) {
                // Gunicorn binds 0.0.0.0:$PORT when PORT is set (PaaS convention).
                bind.push(format!("0.0.0.0:{port}"));
            } else {
                bind.push("127.0.0.1:8000".into());
            }
        }
        for b in &bind {
            crate::sock::BindSpec::parse(b).map_err(|r| err("bind", format!("{b:?}: {r}")))?;
        }

        let workers = match cli.workers.or(file.workers) {
            Some(w) => w,
            None => match getenv("WEB_CONCURRENCY") {
                Some(v) => v.trim().parse().map_err(|_| {
                    err("workers", format!("WEB_CONCURRENCY={v:?} is not a number"))
                })?,
                None => 1,
            },
        };
        if workers == 0 || workers > 1024 {
            return Err(err(
                "workers",
                format!("{workers} is out of range (1 to 1024)"),
            ));
        }
        let threads = cli.threads.or(file.threads).unwrap_or(1);
        if threads == 0 || threads > 256 {
            return Err(err(
                "threads",
                format!("{threads} is out of range (1 to 256)"),
            ));
        }
        let worker_connections = cli
            .worker_connections
            .or(file.worker_connections)
            .unwrap_or(1000);
        if worker_connections == 0 {
            return Err(err("worker_connections", "must be at least 1"));
        }
        let backlog = cli.backlog.or(file.backlog).unwrap_or(2048);
        if backlog <= 0 {
            return Err(err("backlog", format!("{backlog} must be positive")));
        }

        let mut env: Vec<(String, String)> = Vec::new();
        // As Gunicorn: `-e` on the command line replaces the file's raw_env
        // (a setting given in both places takes the command line's value).
        let raw_env = match cli.env.is_empty() {
            true => file.raw_env.map(OneOrMany::into_vec).unwrap_or_default(),
            false => cli.env.clone(),
        };
        for kv in &raw_env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| err("env", format!("{kv:?} is not KEY=VALUE")))?;
            if k.is_empty() {
                return Err(err("env", format!("{kv:?} has an empty name")));
            }
            env.push((k.to_string(), v.to_string()));
        }
        if let Some(map) = file.env {
            env.extend(map);
        }

        let virtualenv = cli
            .virtualenv
            .clone()
            .or(file.virtualenv)
            .or_else(|| virtualenv_from_env(getenv))
            .map(|v| start_dir().join(v));
        if let Some(v) = &virtualenv {
            if !v.join("pyvenv.cfg").is_file() {
                return Err(err(
                    "virtualenv",
                    format!("{} is not a virtualenv (no pyvenv.cfg)", v.display()),
                ));
            }
        }
        // Absolute: the master changes into it, and a HUP reads it again.
        let chdir = cli
            .chdir
            .clone()
            .or(file.chdir)
            .map(|d| start_dir().join(d));
        // Relative to --chdir, as Gunicorn's (it changes directory before
        // it writes the file); absolute, so the file removed at the end is
        // the one written whatever a HUP changes.
        let pidfile = cli
            .pidfile
            .clone()
            .or(file.pidfile)
            .map(|p| chdir.as_deref().unwrap_or(start_dir()).join(p));
        if let Some(d) = &chdir {
            if !d.is_dir() {
                return Err(err("chdir", format!("{} is not a directory", d.display())));
            }
        }
        let pythonpath = cli
            .pythonpath
            .clone()
            .or(file.pythonpath)
            .map(|s| {
                s.split(',')
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();

        let root_path = cli
            .root_path
            .clone()
            .or(file.root_path)
            .or_else(|| getenv("SCRIPT_NAME"))
            .unwrap_or_default();
        if !root_path.is_empty() && !root_path.starts_with('/') {
            return Err(err(
                "root_path",
                format!("{root_path:?} must start with '/'"),
            ));
        }
        let root_path = root_path.trim_end_matches('/').to_string();

        let mut limits = Limits {
            request_line: cli
                .limit_request_line
                .or(file.limit_request_line)
                .unwrap_or(4094),
            fields: cli
                .limit_request_fields
                .or(file.limit_request_fields)
                .unwrap_or(100),
            field_size: cli
                .limit_request_field_size
                .or(file.limit_request_field_size)
                .unwrap_or(8190),
            permit_unconventional_method: cli.permit_unconventional_http_method
                || file.permit_unconventional_http_method.unwrap_or(false),
            casefold_method: cli.casefold_http_method || file.casefold_http_method.unwrap_or(false),
        };
        // Past Gunicorn's maximums, Gunicorn uses the maximum: a config
        // written for it starts here too, with a word about it.
        let clamp = |key: &str, value: &mut usize, max: usize| {
            if *value > max {
                crate::log::warning(&format!(
                    "{key} = {value} is over its maximum, {max}: using {max} (as Gunicorn)"
                ));
                *value = max;
            }
        };
        clamp("limit_request_line", &mut limits.request_line, 8190);
        clamp("limit_request_fields", &mut limits.fields, 32768);

        let split = |s: &str| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .collect::<Vec<_>>()
        };
        let allow = match &cli.forwarded_allow_ips {
            Some(s) => split(s),
            None => match file.forwarded_allow_ips {
                Some(OneOrMany::One(s)) => split(&s),
                Some(OneOrMany::Many(v)) => v,
                None => match getenv("FORWARDED_ALLOW_IPS") {
                    Some(s) => split(&s),
                    None => vec!["127.0.0.1".to_string(), "::1".to_string()],
                },
            },
        };
        let forwarded_allow_ips = AllowIps::parse("forwarded_allow_ips", &allow)?;
        let secure_scheme_headers = match file.secure_scheme_headers {
            Some(map) => {
                let mut v = Vec::new();
                for (name, value) in map {
                    if !crate::http::response::valid_header_name(name.as_bytes()) {
                        return Err(err(
                            "secure_scheme_headers",
                            format!("{name:?} is not a header name"),
                        ));
                    }
                    v.push((name, value));
                }
                v
            }
            None => DEFAULT_SECURE_SCHEME_HEADERS
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        };
        let allow = match &cli.proxy_allow_ips {
            Some(s) => split(s),
            None => match file.proxy_allow_ips {
                Some(OneOrMany::One(s)) => split(&s),
                Some(OneOrMany::Many(v)) => v,
                None => vec!["127.0.0.1".to_string(), "::1".to_string()],
            },
        };
        let proxy_allow_ips = AllowIps::parse("proxy_allow_ips", &allow)?;

        let loglevel = match cli
            .loglevel
            .clone()
            .or(file.loglevel)
            .unwrap_or_else(|| "info".into())
            .to_ascii_lowercase()
            .as_str()
        {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warning" | "warn" => LogLevel::Warning,
            "error" => LogLevel::Error,
            "critical" => LogLevel::Critical,
            other => {
                return Err(err(
                    "loglevel",
                    format!("{other:?} is not one of debug, info, warning, error, critical"),
                ));
            }
        };
        let log_target = match cli.log_target.clone().or(file.log_target).as_deref() {
            None | Some("auto") => LogTarget::Auto,
            Some("stderr") => LogTarget::Stderr,
            Some("journald") | Some("journal") => LogTarget::Journald,
            Some(other) => {
                return Err(err(
                    "log_target",
                    format!("{other:?} is not auto, stderr or journald"),
                ));
            }
        };

        let umask = match cli.umask.clone() {
            Some(s) => parse_umask(&s)?,
            None => match file.umask {
                Some(TomlUmask::Int(i)) => i,
                Some(TomlUmask::Str(s)) => parse_umask(&s)?,
                None => 0,
            },
        };
        if umask > 0o777 {
            return Err(err("umask", format!("{umask:o} is not a valid umask")));
        }
        let access_log_format = cli
            .access_log_format
            .clone()
            .or(file.access_log_format)
            .unwrap_or_else(|| DEFAULT_ACCESS_LOG_FORMAT.to_string());
        let proc_name = cli
            .proc_name
            .clone()
            .or(file.proc_name)
            .unwrap_or_else(|| wsgi_app.clone());

        let proxy_protocol = match cli
            .proxy_protocol
            .clone()
            .or(file.proxy_protocol.map(Switch::into_word))
        {
            None => ProxyProtocol::Off,
            Some(w) => ProxyProtocol::parse(&w).ok_or_else(|| {
                err(
                    "proxy_protocol",
                    format!("{w:?} is not one of off, v1, v2, auto (or true, false)"),
                )
            })?,
        };

        let reload_extra_files = if cli.reload_extra_files.is_empty() {
            file.reload_extra_files
                .map(OneOrMany::into_vec)
                .unwrap_or_default()
        } else {
            cli.reload_extra_files.clone()
        };
        let reload_extra_files = reload_extra_files
            .into_iter()
            .map(|p| from_start_dir(&p))
            .collect();

        Ok(Settings {
            wsgi_app,
            bind,
            bind_is_default,
            workers,
            threads,
            worker_connections,
            backlog,
            keepalive: cli.keepalive.or(file.keepalive).unwrap_or(2),
            timeout: cli.timeout.or(file.timeout).unwrap_or(30),
            graceful_timeout: cli.graceful_timeout.or(file.graceful_timeout).unwrap_or(30),
            max_requests: cli.max_requests.or(file.max_requests).unwrap_or(0),
            max_requests_jitter: cli
                .max_requests_jitter
                .or(file.max_requests_jitter)
                .unwrap_or(0),
            chdir,
            pythonpath,
            env,
            virtualenv,
            root_path,
            limits,
            forwarded_allow_ips,
            secure_scheme_headers,
            proxy_protocol,
            proxy_allow_ips,
            errorlog: cli
                .errorlog
                .clone()
                .or(file.errorlog)
                .unwrap_or_else(|| "-".into()),
            loglevel,
            accesslog: cli.accesslog.clone().or(file.accesslog),
            access_log_format,
            log_target,
            // Plain flags, as in Gunicorn: given on the command line, or
            // `preload_app = true` / `reload = true` in the file.
            preload: cli.preload || file.preload_app.or(file.preload).unwrap_or(false),
            reuse_port: cli.reuse_port || file.reuse_port.unwrap_or(false),
            initgroups: cli.initgroups || file.initgroups.unwrap_or(false),
            capture_output: cli.capture_output || file.capture_output.unwrap_or(false),
            reload: cli.reload || file.reload.unwrap_or(false),
            reload_extra_files,
            user: cli.user.clone().or(file.user.map(NameOrId::into_string)),
            group: cli.group.clone().or(file.group.map(NameOrId::into_string)),
            umask,
            pidfile,
            proc_name,
            body_buffer_size: cli
                .body_buffer_size
                .or(file.body_buffer_size)
                .unwrap_or(1 << 20),
            limit_request_body: cli
                .limit_request_body
                .or(file.limit_request_body)
                .unwrap_or(0),
            hooks: file.hooks,
        })
    }
}

impl Settings {
    /// The resolved settings as the TOML a config file would hold
    /// (`--print-config`): every key, unset ones as comments.
    pub fn describe(&self) -> String {
        fn q(s: &str) -> String {
            toml::Value::String(s.to_string()).to_string()
        }
        fn list<'a>(v: impl IntoIterator<Item = &'a str>) -> String {
            format!("[{}]", v.into_iter().map(q).collect::<Vec<_>>().join(", "))
        }
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| q(&p.display().to_string()));
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pythonpath: Vec<String> = self
            .pythonpath
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let rows: Vec<(&str, Option<String>)> = vec![
            ("wsgi_app", Some(q(&self.wsgi_app))),
            ("bind", Some(list(self.bind.iter().map(String::as_str)))),
            ("workers", Some(self.workers.to_string())),
            ("threads", Some(self.threads.to_string())),
            (
                "worker_connections",
                Some(self.worker_connections.to_string()),
            ),
            ("backlog", Some(self.backlog.to_string())),
            ("keepalive", Some(self.keepalive.to_string())),
            ("timeout", Some(self.timeout.to_string())),
            ("graceful_timeout", Some(self.graceful_timeout.to_string())),
            ("max_requests", Some(self.max_requests.to_string())),
            (
                "max_requests_jitter",
                Some(self.max_requests_jitter.to_string()),
            ),
            ("chdir", path(&self.chdir)),
            (
                "pythonpath",
                (!pythonpath.is_empty()).then(|| q(&pythonpath.join(","))),
            ),
            ("raw_env", Some(list(env.iter().map(String::as_str)))),
            ("virtualenv", path(&self.virtualenv)),
            ("root_path", Some(q(&self.root_path))),
            (
                "limit_request_line",
                Some(self.limits.request_line.to_string()),
            ),
            ("limit_request_fields", Some(self.limits.fields.to_string())),
            (
                "limit_request_field_size",
                Some(self.limits.field_size.to_string()),
            ),
            (
                "permit_unconventional_http_method",
                Some(self.limits.permit_unconventional_method.to_string()),
            ),
            (
                "casefold_http_method",
                Some(self.limits.casefold_method.to_string()),
            ),
            (
                "forwarded_allow_ips",
                Some(self.forwarded_allow_ips.describe()),
            ),
            (
                "secure_scheme_headers",
                Some(format!(
                    "{{{}}}",
                    self.secure_scheme_headers
                        .iter()
                        .map(|(n, v)| format!("{} = {}", q(n), q(v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            ),
            ("proxy_protocol", Some(q(self.proxy_protocol.name()))),
            ("proxy_allow_ips", Some(self.proxy_allow_ips.describe())),
            ("errorlog", Some(q(&self.errorlog))),
            ("capture_output", Some(self.capture_output.to_string())),
            (
                "loglevel",
                Some(q(&self.loglevel.name().to_ascii_lowercase())),
            ),
            ("accesslog", self.accesslog.as_deref().map(q)),
            ("access_log_format", Some(q(&self.access_log_format))),
            (
                "log_target",
                Some(q(match self.log_target {
                    LogTarget::Auto => "auto",
                    LogTarget::Stderr => "stderr",
                    LogTarget::Journald => "journald",
                })),
            ),
            ("preload_app", Some(self.preload.to_string())),
            ("reuse_port", Some(self.reuse_port.to_string())),
            ("initgroups", Some(self.initgroups.to_string())),
            ("reload", Some(self.reload.to_string())),
            (
                "reload_extra_files",
                Some(list(self.reload_extra_files.iter().map(String::as_str))),
            ),
            ("user", self.user.as_deref().map(q)),
            ("group", self.group.as_deref().map(q)),
            ("umask", Some(q(&format!("{:04o}", self.umask)))),
            ("pidfile", path(&self.pidfile)),
            ("proc_name", Some(q(&self.proc_name))),
            ("body_buffer_size", Some(self.body_buffer_size.to_string())),
            (
                "limit_request_body",
                Some(self.limit_request_body.to_string()),
            ),
        ];
        let mut out = String::new();
        for (k, v) in rows {
            match v {
                Some(v) => out.push_str(&format!("{k} = {v}\n")),
                None => out.push_str(&format!("# {k} (not set)\n")),
            }
        }
        if let Some(h) = &self.hooks {
            out.push_str(&format!(
                "# server hooks, defined in {}: {}\n",
                h.location,
                h.names.join(", ")
            ));
        }
        out
    }
}

/// `p` made absolute against the directory ferricorn was started in (read
/// once: with --preload the master later changes to --chdir, and a HUP
/// re-reads the settings there).
fn from_start_dir(p: &str) -> String {
    if Path::new(p).is_absolute() {
        return p.to_string();
    }
    start_dir().join(p).display().to_string()
}

/// A config spec (`PATH`, `file:PATH`, `python:MODULE`) with a relative
/// path made absolute against the directory ferricorn was started in.
fn from_start_dir_spec(spec: &Path) -> PathBuf {
    let text = spec.to_string_lossy();
    if text.starts_with("python:") {
        return spec.to_path_buf();
    }
    match text.strip_prefix("file:") {
        Some(p) => PathBuf::from(format!("file:{}", from_start_dir(p))),
        None => start_dir().join(spec),
    }
}

/// Move the process into `--chdir` (or back to where it started, when a
/// HUP's settings drop it), as Gunicorn does right after reading its
/// settings: relative log files, the pid file and unix socket paths are
/// then where a Gunicorn user expects them.
pub fn enter_working_dir(s: &Settings) -> Result<(), ConfigError> {
    let d = s.chdir.as_deref().unwrap_or(start_dir());
    std::env::set_current_dir(d).map_err(|e| err("chdir", format!("{}: {e}", d.display())))
}

/// The working directory at the first settings load (the start).
pub fn start_dir() -> &'static Path {
    static START: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    START.get_or_init(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")))
}

/// Gunicorn's `auto_int`: `0o27`, `0x17`, `0b10111` by their prefix, a
/// leading 0 (`0027`) octal, other digits (`23`) decimal.
fn parse_umask(s: &str) -> Result<u32, ConfigError> {
    let t = s.trim().to_ascii_lowercase();
    let (digits, radix) = if let Some(d) = t.strip_prefix("0o") {
        (d, 8)
    } else if let Some(d) = t.strip_prefix("0x") {
        (d, 16)
    } else if let Some(d) = t.strip_prefix("0b") {
        (d, 2)
    } else if t.len() > 1 && t.starts_with('0') {
        (&t[1..], 8)
    } else {
        (t.as_str(), 10)
    };
    u32::from_str_radix(digits, radix).map_err(|_| {
        err(
            "umask",
            format!("{s:?} is not a number (0027 or 0o027 octal, 0x17 hex, 23 decimal)"),
        )
    })
}

/// `module:callable`, `module:factory()` or `module` (callable defaults to
/// `application`, as in Gunicorn).
fn validate_app_spec(spec: &str) -> Result<(), ConfigError> {
    let (module, obj) = spec.split_once(':').unwrap_or((spec, "application"));
    let ident_path = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|p| {
                !p.is_empty()
                    && !p.starts_with(|c: char| c.is_ascii_digit())
                    && p.chars().all(|c| c.is_alphanumeric() || c == '_')
            })
    };
    if !ident_path(module) {
        return Err(err(
            "wsgi_app",
            format!("{spec:?}: {module:?} is not a module name"),
        ));
    }
    let name = obj.split('(').next().unwrap_or("");
    if !ident_path(name) || (obj.contains('(') && !obj.ends_with(')')) {
        return Err(err(
            "wsgi_app",
            format!("{spec:?}: {obj:?} is not a variable name or a call like factory()"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_are_said_in_plain_words() {
        let reason = |text: &str| {
            let e = toml::from_str::<FileOptions>(text).unwrap_err();
            let ConfigError { key, reason } = file_error(Path::new("app.toml"), text, &e, false);
            (key, reason)
        };
        let (key, msg) = reason("workers = \"four\"");
        assert_eq!(key, "workers");
        assert!(
            msg.ends_with("invalid type: string \"four\", expected a whole number, 0 or more"),
            "{msg}"
        );
        let (key, msg) = reason("timeout = -1");
        assert_eq!(key, "timeout");
        assert!(msg.ends_with("expected a whole number, 0 or more"), "{msg}");
        let (key, msg) = reason("bind = 8000");
        assert_eq!(key, "bind");
        assert!(
            msg.ends_with("expected a string or a list of strings"),
            "{msg}"
        );
    }

    #[test]
    fn python_config_names_are_the_toml_keys() {
        // serde lists the expected fields in its unknown-field error
        let e = toml::from_str::<FileOptions>("no_such_setting = 1")
            .unwrap_err()
            .to_string();
        let listed = e.split("expected one of").nth(1).expect(&e);
        let mut fields: Vec<&str> = listed.split('`').skip(1).step_by(2).collect();
        fields.sort();
        let mut known = crate::pyconfig::KNOWN.to_vec();
        known.sort();
        assert_eq!(fields, known);
    }

    #[test]
    fn umask_reads_as_gunicorn_reads_it() {
        for (text, want) in [
            ("0027", 0o027),
            ("0o027", 0o027),
            ("0O77", 0o077),
            ("0x17", 0x17),
            ("0b111", 0b111),
            ("23", 23),
            ("0", 0),
            (" 007 ", 0o007),
        ] {
            assert_eq!(parse_umask(text).unwrap(), want, "{text}");
        }
        for bad in ["", "0o8", "08", "0x", "-1", "abc"] {
            let e = parse_umask(bad).unwrap_err();
            assert_eq!(e.key, "umask", "{bad}");
        }
    }

    fn opts(args: &[&str]) -> Options {
        let mut v = vec!["ferricorn"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().opts
    }

    /// file_error for TEXT as a TOML file named P (line numbers shown).
    fn toml_file_error(p: &Path, text: &str) -> ConfigError {
        file_error(
            p,
            text,
            &toml::from_str::<FileOptions>(text).unwrap_err(),
            true,
        )
    }

    fn merge(o: &Options, file: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let f: FileOptions = toml::from_str(file).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Settings::merge(o, f, &|k| {
            env.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
        })
    }

    #[test]
    fn defaults_match_gunicorn() {
        let s = merge(&opts(&["app:app"]), "", &[]).unwrap();
        assert_eq!(s.bind, vec!["127.0.0.1:8000"]);
        assert_eq!(
            (s.workers, s.threads, s.keepalive, s.timeout),
            (1, 1, 2, 30)
        );
        assert_eq!(
            s.limits,
            Limits {
                request_line: 4094,
                fields: 100,
                field_size: 8190,
                permit_unconventional_method: false,
                casefold_method: false,
            }
        );
        assert!(s.accesslog.is_none());
        assert!(s.forwarded_allow_ips.allows(&"127.0.0.1".parse().unwrap()));
        assert!(!s.forwarded_allow_ips.allows(&"10.0.0.1".parse().unwrap()));
        assert!(
            s.forwarded_allow_ips
                .allows(&"::ffff:127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn allow_lists_take_networks() {
        let s = merge(
            &opts(&[
                "--forwarded-allow-ips",
                "10.1.0.0/16, 2001:db8::/32,192.0.2.7",
                "app:app",
            ]),
            "",
            &[],
        )
        .unwrap();
        let allows = |ip: &str| s.forwarded_allow_ips.allows(&ip.parse().unwrap());
        assert!(allows("10.1.255.3") && allows("10.1.0.0") && !allows("10.2.0.1"));
        assert!(allows("2001:db8:ffff::1") && !allows("2001:db9::1"));
        assert!(allows("192.0.2.7") && !allows("192.0.2.8") && allows("::ffff:10.1.2.3"));
        assert!(
            s.describe()
                .contains(r#"forwarded_allow_ips = ["10.1.0.0/16", "2001:db8::/32", "192.0.2.7"]"#)
        );
        let all = |v: &str| {
            merge(&opts(&["--proxy-allow-from", v, "app:app"]), "", &[])
                .map(|s| s.proxy_allow_ips.allows(&"203.0.113.9".parse().unwrap()))
        };
        assert_eq!(all("0.0.0.0/0").unwrap(), true);
        assert_eq!(all("203.0.113.9/32").unwrap(), true);
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "::/129",
            "10.0.0/8",
        ] {
            let e = all(bad).unwrap_err();
            assert_eq!(e.key, "proxy_allow_ips", "{bad}");
        }
    }

    #[test]
    fn cli_beats_file_beats_env() {
        let s = merge(
            &opts(&["-w", "3", "app:app"]),
            "workers = 5",
            &[("WEB_CONCURRENCY", "7")],
        )
        .unwrap();
        assert_eq!(s.workers, 3);
        let s = merge(
            &opts(&["app:app"]),
            "workers = 5",
            &[("WEB_CONCURRENCY", "7")],
        )
        .unwrap();
        assert_eq!(s.workers, 5);
        let s = merge(&opts(&["app:app"]), "", &[("WEB_CONCURRENCY", "7")]).unwrap();
        assert_eq!(s.workers, 7);
    }

    #[test]
    fn errors_name_the_key() {
        let e = merge(&opts(&["-w", "0", "app:app"]), "", &[]).unwrap_err();
        assert_eq!(e.key, "workers");
        let e = merge(&opts(&["-b", "host:http", "app:app"]), "", &[]).unwrap_err();
        assert_eq!(e.key, "bind");
        let e = merge(&opts(&["--log-level", "loud", "app:app"]), "", &[]).unwrap_err();
        assert_eq!(e.key, "loglevel");
        let e = merge(&opts(&["app:app", "--forwarded-allow-ips", "x"]), "", &[]).unwrap_err();
        assert_eq!(e.key, "forwarded_allow_ips");
        let e = merge(&opts(&["1app:app"]), "", &[]).unwrap_err();
        assert_eq!(e.key, "wsgi_app");
        let e = toml::from_str::<FileOptions>("wokers = 2").unwrap_err();
        assert!(e.to_string().contains("wokers"), "{e}");
        let p = Path::new("app.toml");
        let text = "bind = [\"x\"]\nworkers = \"two\"\n";
        let e = toml_file_error(p, text);
        assert_eq!(e.key, "workers");
        assert!(
            e.reason.starts_with("app.toml line 2: invalid type"),
            "{}",
            e.reason
        );
        let text = "workerz = 2\n";
        let e = toml_file_error(p, text);
        assert_eq!(e.key, "workerz");
        assert!(e.reason.contains("unknown field `workerz`"), "{}", e.reason);
        let text = "[[[\n";
        let e = toml_file_error(p, text);
        assert_eq!(e.key, "config");
    }

    #[test]
    fn flags_do_not_swallow_the_app() {
        let o = opts(&["--preload", "app:app"]);
        assert!(o.preload);
        assert_eq!(o.wsgi_app.as_deref(), Some("app:app"));
        let s = merge(&opts(&["app:app"]), "preload_app = true", &[]).unwrap();
        assert!(s.preload);
    }

    #[test]
    fn app_spec_forms() {
        for ok in [
            "app",
            "app:app",
            "pkg.mod:application",
            "m:create_app()",
            "m:make(debug=True)",
        ] {
            validate_app_spec(ok).unwrap();
        }
        for bad in ["", ":app", "a..b:app", "m:", "m:f(", "m:1x"] {
            assert!(validate_app_spec(bad).is_err(), "{bad}");
        }
    }
}
