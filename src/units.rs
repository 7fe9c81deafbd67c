//! `ferricorn systemd-units NAME`: write a socket + service pair for one
//! app, so `systemctl start NAME.socket` and `journalctl -u NAME` use the
//! operator's own unit name. The unit text is systemd/named/*.in, embedded
//! at build time; only the placeholders change.

use std::path::Path;

use crate::config::{EXIT_CONFIG_ERROR, UnitArgs};

const SOCKET_IN: &str = include_str!("../systemd/named/NAME.socket.in");
const SERVICE_IN: &str = include_str!("../systemd/named/NAME.service.in");

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('-')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.\\-".contains(c))
}

fn listen_stream(v: &str) -> Result<String, String> {
    let v = v.strip_prefix("unix:").unwrap_or(v);
    if v.starts_with('/') || (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit())) {
        return Ok(v.to_string());
    }
    match crate::sock::BindSpec::parse(v) {
        Ok(crate::sock::BindSpec::Tcp(hp)) => Ok(hp),
        _ => Err(format!(
            "--listen {v:?} is not HOST:PORT, PORT or a unix socket path"
        )),
    }
}

pub fn render(a: &UnitArgs) -> Result<[(String, String); 2], String> {
    if !valid_name(&a.name) {
        return Err(format!(
            "{:?} is not a valid unit name (letters, digits, ':', '_', '.', '-', no '@')",
            a.name
        ));
    }
    let config = std::path::absolute(&a.config).map_err(|e| format!("--config: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find our own binary: {e}"))?;
    let streams: Vec<String> = if a.listen.is_empty() {
        vec![format!("/run/ferricorn/{}.sock", a.name)]
    } else {
        a.listen
            .iter()
            .map(|l| listen_stream(l))
            .collect::<Result<_, _>>()?
    };
    let listen = streams
        .iter()
        .map(|s| format!("ListenStream={s}"))
        .collect::<Vec<_>>()
        .join("\n");
    let group = a.group.clone().unwrap_or_else(|| a.user.clone());
    let fill = |t: &str| {
        t.replace("@NAME@", &a.name)
            .replace("@CONFIG@", &config.display().to_string())
            .replace("@FERRICORN@", &exe.display().to_string())
            .replace("@USER@", &a.user)
            .replace("@GROUP@", &group)
            .replace("@LISTEN_STREAMS@", &listen)
    };
    Ok([
        (format!("{}.socket", a.name), fill(SOCKET_IN)),
        (format!("{}.service", a.name), fill(SERVICE_IN)),
    ])
}

pub fn write(a: &UnitArgs) -> i32 {
    let units = match render(a) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("ferricorn systemd-units: {e}");
            return EXIT_CONFIG_ERROR;
        }
    };
    if a.output_dir == Path::new("-") {
        for (name, text) in &units {
            println!("# {name}\n{text}");
        }
        return 0;
    }
    for (name, _) in &units {
        let p = a.output_dir.join(name);
        if p.exists() && !a.force {
            eprintln!(
                "ferricorn systemd-units: {} exists (use --force to overwrite)",
                p.display()
            );
            return 1;
        }
    }
    for (name, text) in &units {
        let p = a.output_dir.join(name);
        if let Err(e) = std::fs::write(&p, text) {
            eprintln!("ferricorn systemd-units: writing {}: {e}", p.display());
            return 1;
        }
        println!("wrote {}", p.display());
    }
    println!(
        "now run: systemctl daemon-reload && systemctl enable --now {}.socket",
        a.name
    );
    0
}
