//! ferricorn: a pre-fork WSGI server. This file only wires the pieces:
//! parse the command line, load settings, open sockets, run the master.
//! See ARCHITECTURE.md for the map.

// Collapsing nested `if let`s needs let-chains, stable only since Rust
// 1.88: kept nested rather than ask for a newer compiler for style.
#![allow(clippy::collapsible_if)]

mod balance;
mod config;
mod env_args;
mod gunicorn_only;
mod http;
mod log;
mod manpage;
mod master;
mod pidfile;
mod preload;
mod privileges;
mod proctitle;
mod pyconfig;
mod scoreboard;
mod sock;
// The protocol modules offer the whole of each protocol (some of it used
// only by their tests so far); unused parts are not dead weight.
#[allow(dead_code)]
mod systemd;
mod units;
mod worker;
mod wsgi;

use clap::{CommandFactory, Parser};

use config::{Cli, Command, EXIT_CONFIG_ERROR, Settings};
use systemd::notify::{self, Notifier};

fn main() {
    // Rust's runtime catches SIGSEGV/SIGBUS to report stack overflows, and
    // returns from a signal that is not a fault, so `kill -SEGV` left a
    // worker running (faulthandler chains to it). As Python processes do,
    // die of them: faulthandler still prints the stacks first.
    // SAFETY: setting two signals' dispositions before any thread exists.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
    master::remember_exe();
    let argv = match env_args::argv() {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(EXIT_CONFIG_ERROR);
        }
    };
    let argv = config::pin_optional_values(without_gunicorn_only_flags(argv));
    let cli = Cli::parse_from(argv);
    match cli.command {
        Some(Command::Generate { what, dir }) => std::process::exit(generate(&what, dir)),
        Some(Command::SystemdUnits(args)) => std::process::exit(units::write(&args)),
        None => {}
    }
    std::process::exit(serve(cli.opts));
}

/// A Gunicorn command line runs as it is: Gunicorn's flags that ferricorn
/// does not have are named in a warning and dropped, or stop the start
/// when honouring them matters (src/gunicorn_only.rs).
fn without_gunicorn_only_flags(argv: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if env_args::names_a_subcommand(&argv) {
        return argv;
    }
    let with_value = flags_taking_a_value();
    let taken = gunicorn_only::take_from_argv(argv, &|a: &str| with_value.iter().any(|f| f == a));
    let (argv, given) = match taken {
        Ok(t) => t,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(EXIT_CONFIG_ERROR);
        }
    };
    let given = given.iter().map(|g| (g.name, g.value.as_str()));
    if let Err((name, why)) =
        gunicorn_only::warn_or_refuse(given, "ignoring Gunicorn options ferricorn does not have")
    {
        let msg = format!("invalid setting `{name}`: {why}");
        eprintln!("Error: {msg}");
        let checking = argv
            .iter()
            .any(|a| a == "--check-config" || a == "--print-config");
        if checking {
            // Gunicorn's --check-config reports any problem as status 1.
            std::process::exit(1);
        }
        config_failed(&msg);
        std::process::exit(EXIT_CONFIG_ERROR);
    }
    argv
}

/// ferricorn's own flags that always take a value (`-n NAME`), so that
/// the value is never read as a flag. `--proxy-protocol`'s value is
/// optional: what follows it may be a flag.
fn flags_taking_a_value() -> Vec<String> {
    let mut out = Vec::new();
    for arg in Cli::command().get_arguments() {
        let optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
        if !arg.get_action().takes_values() || optional {
            continue;
        }
        let longs = arg
            .get_long()
            .into_iter()
            .chain(arg.get_all_aliases().into_iter().flatten());
        out.extend(longs.map(|l| format!("--{l}")));
        out.extend(arg.get_short().map(|c| format!("-{c}")));
    }
    out
}

fn generate(what: &str, dir: Option<std::path::PathBuf>) -> i32 {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout();
    match what {
        "man-pages" => {
            // ferricorn.1 names ferricorn-generate(1) and
            // ferricorn-systemd-units(1): write those too.
            let Some(dir) = dir else {
                eprintln!("ferricorn: generate man-pages: give the directory to write them to");
                return EXIT_CONFIG_ERROR;
            };
            // clap's pages for the subcommands, then ours for ferricorn(1).
            let page = dir.join("ferricorn.1");
            let written = clap_mangen::generate_to(cmd.clone(), &dir).and_then(|()| {
                let mut f = std::io::BufWriter::new(std::fs::File::create(&page)?);
                manpage::render(cmd, &mut f)?;
                std::io::Write::flush(&mut f)
            });
            if let Err(e) = written {
                eprintln!("ferricorn: generate man-pages: {}: {e}", dir.display());
                return 1;
            }
        }
        "man" => {
            if let Err(e) = manpage::render(cmd, &mut out) {
                eprintln!("ferricorn: {e}");
                return 1;
            }
        }
        "bash" => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "ferricorn", &mut out)
        }
        "zsh" => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "ferricorn", &mut out)
        }
        "fish" => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "ferricorn", &mut out)
        }
        other => {
            eprintln!(
                "ferricorn: generate: unknown target {other:?} (man, man-pages DIR, bash, zsh, fish)"
            );
            return EXIT_CONFIG_ERROR;
        }
    }
    0
}

/// `--check-config` / `--print-config`: the settings were valid; check
/// the user and group exist and that the app imports, as Gunicorn does,
/// without binding or forking. 0 when all is well, 1 otherwise.
fn check_config(opts: &config::Options, settings: &Settings) -> i32 {
    if opts.print_config {
        print!("{}", settings.describe());
    }
    if let Err(e) = privileges::check(settings) {
        eprintln!("Error: invalid setting `user`/`group`: {e}");
        return 1;
    }
    if let Err(e) =
        wsgi::prepare_process(settings).and_then(|_| wsgi::init_interpreter(settings, true))
    {
        eprintln!("Error: {e}");
        return 1;
    }
    let loaded = pyo3::Python::attach(|py| {
        wsgi::load_app(py, &settings.wsgi_app)
            .map(drop)
            .map_err(|e| e.describe(py))
    });
    match loaded {
        Ok(()) => 0,
        Err(tb) => {
            eprintln!(
                "Error while loading the application {:?}:\n{}",
                settings.wsgi_app,
                tb.trim_end()
            );
            1
        }
    }
}

/// A fatal configuration error under systemd: STATUS= and ERRNO= say why
/// (`systemctl status` shows it), as for every other startup failure.
fn config_failed(why: &str) {
    if let Some(n) = Notifier::from_env() {
        let _ = n.errno_status(libc::EINVAL, &format!("configuration error: {why}"));
    }
}

fn serve(opts: config::Options) -> i32 {
    let mut handoff = match master::take_handoff() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ferricorn: {e}");
            return 1;
        }
    };
    let checking = opts.check_config || opts.print_config;
    let settings = match Settings::load(&opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: {e}");
            if checking {
                // Gunicorn's --check-config reports any problem as status 1.
                return 1;
            }
            config_failed(&e.to_string());
            return EXIT_CONFIG_ERROR;
        }
    };
    if let Err(e) = config::enter_working_dir(&settings) {
        eprintln!("Error: {e}");
        if checking {
            return 1;
        }
        config_failed(&e.to_string());
        return EXIT_CONFIG_ERROR;
    }
    if checking {
        return check_config(&opts, &settings);
    }
    if let Err(e) = log::init(&settings) {
        eprintln!("Error: {e}");
        config_failed(&e.to_string());
        return EXIT_CONFIG_ERROR;
    }
    if let Err(e) = privileges::check(&settings) {
        let msg = format!("invalid setting `user`/`group`: {e}");
        log::critical(&msg);
        config_failed(&msg);
        return EXIT_CONFIG_ERROR;
    }

    // systemd's variables are read once, then removed so the workers and
    // the app do not inherit them (NotifyAccess=main; LISTEN_PID is ours).
    let notifier = Notifier::from_env();
    let watchdog = notify::watchdog_timeout();
    notify::unset_env();
    // USR2 re-executes in place under systemd (its main PID must stay),
    // and starts a second master as Gunicorn's does everywhere else.
    let upgrade_in_place = notifier.is_some() || std::env::var_os("INVOCATION_ID").is_some();
    // The new master of a Gunicorn-style USR2 (its old master still runs).
    if let Some(h) = handoff.as_mut() {
        h.resolve_old_master(settings.pidfile.as_deref());
    }
    let second_master = handoff.as_ref().is_some_and(|h| h.old_master.is_some());
    let started_by_usr2 = second_master && handoff.as_ref().is_some_and(|h| h.parent.is_some());

    let listeners = match &handoff {
        Some(h) => match master::adopt_listeners(&h.listeners) {
            Ok(l) => l,
            Err(e) => {
                log::critical(&format!("upgrade: {e}"));
                return 1;
            }
        },
        None => {
            let activated = match systemd::activation::take_from_env() {
                Ok(a) => a,
                Err(e) => {
                    log::critical(&e.to_string());
                    if let Some(n) = &notifier {
                        let _ = n.errno_status(e.errno(), &e.to_string());
                    }
                    return 1;
                }
            };
            match sock::open_listeners(
                &settings.bind,
                settings.bind_is_default,
                sock::SocketOptions::of(&settings),
                activated,
            ) {
                Ok(l) => l,
                Err(e) => {
                    log::critical(&format!("Cannot listen: {e}"));
                    if let Some(n) = &notifier {
                        let _ = n.errno_status(e.errno, &format!("cannot listen: {e}"));
                    }
                    return 1;
                }
            }
        }
    };
    if started_by_usr2 {
        log::info(&format!(
            "Starting ferricorn {} as the new master of a USR2 upgrade",
            env!("CARGO_PKG_VERSION")
        ));
    } else if handoff.is_none() {
        log::info(&format!("Starting ferricorn {}", env!("CARGO_PKG_VERSION")));
        // Unix sockets we bound belong to the workers' user and group, as
        // Gunicorn's do (the umask sets who else may connect).
        let ours = listeners.iter().filter_map(|l| l.owned_path());
        if let Err(e) = privileges::chown_to_workers(&settings, ours) {
            log::critical(&format!(
                "Cannot give the unix socket to --user/--group: {e}"
            ));
            return 1;
        }
    }
    for l in &listeners {
        log::info(&format!(
            "Listening at: {} ({})",
            l.addr,
            std::process::id()
        ));
    }
    log::info(&format!(
        "Using worker: ferricorn (Python {}.{}, {} thread{} per worker)",
        wsgi::linked_version().0,
        wsgi::linked_version().1,
        settings.threads,
        if settings.threads == 1 { "" } else { "s" }
    ));
    if settings.reload && settings.preload && (handoff.is_none() || started_by_usr2) {
        log::warning(
            "--reload with --preload: the app is imported once, in the master, so a change \
             restarts the workers on the code already loaded; send HUP to load the new code \
             (Gunicorn documents the two as incompatible)",
        );
    }
    if let Some(p) = &settings.pidfile {
        if let Err(e) = pidfile::create(&master::pidfile_path(p, second_master)) {
            log::critical(&e);
            return 1;
        }
    }
    proctitle::set(&format!(
        "ferricorn: master [{}{}]",
        settings.proc_name,
        if second_master { ".2" } else { "" }
    ));
    match master::Master::new(
        opts,
        settings,
        listeners,
        notifier,
        watchdog,
        handoff,
        upgrade_in_place,
    ) {
        Ok(m) => m.run(),
        Err(e) => {
            log::critical(&e);
            1
        }
    }
}
